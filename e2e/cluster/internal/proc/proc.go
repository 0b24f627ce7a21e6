// Package proc records processes so that they can be found again, and only they: a PID is
// written with its start time, and a PID reused by another process never matches.
package proc

import (
	"fmt"
	"os"
	"strings"
)

// Start is a process's start time in clock ticks since boot (field 22 of /proc/PID/stat).
func Start(pid int) (string, bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", false
	}
	// The command name (field 2) may hold spaces; the fields after its ')' are plain.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return "", false
	}
	fields := strings.Fields(s[i+1:])
	if len(fields) < 20 {
		return "", false
	}
	return fields[19], true
}

// Record writes "PID STARTTIME" to path.
func Record(path string, pid int) error {
	start, ok := Start(pid)
	if !ok {
		return fmt.Errorf("process %d is gone", pid)
	}
	return os.WriteFile(path, []byte(fmt.Sprintf("%d %s\n", pid, start)), 0o644)
}

// Running reads a file written by Record: the PID, if that very process still runs.
func Running(path string) (int, bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	var pid int
	var start string
	if _, err := fmt.Sscan(string(data), &pid, &start); err != nil {
		return 0, false
	}
	now, ok := Start(pid)
	return pid, ok && now == start
}
