package supervisor

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"
)

// The supervisor owns the components' processes, so `stop-component` and `start-component`
// ask it, over a unix socket in the state directory (owner-only), whether the supervisor runs
// in the foreground of a test or in the background. One JSON request line, one JSON answer
// line; requests are handled one at a time.
const controlSocket = "supervisor.sock"

// unixPathMax is the size of sockaddr_un.sun_path on Linux, its terminating NUL included.
const unixPathMax = 108

type controlRequest struct {
	// Command is "stop" or "start".
	Command   string `json:"command"`
	Component string `json:"component"`
	// Kill stops with SIGKILL at once; otherwise SIGTERM, and SIGKILL after Grace.
	Kill  bool          `json:"kill,omitempty"`
	Grace time.Duration `json:"grace,omitempty"`
	// Timeout bounds the wait for a started component to be healthy.
	Timeout time.Duration `json:"timeout,omitempty"`
}

type controlAnswer struct {
	Error   string `json:"error,omitempty"`
	Message string `json:"message,omitempty"`
}

// noControl is the listener of a supervisor whose socket path is too long: the control
// commands then say why they cannot reach it.
type noControl struct{}

func (noControl) Close() error { return nil }

// serveControl listens on the control socket and handles requests until closed.
func (s *supervisor) serveControl() (io.Closer, error) {
	path := s.st.path(controlSocket)
	if len(path) >= unixPathMax {
		fmt.Fprintf(os.Stderr, "pie-cluster: no control socket (stop-component, start-component): %s is longer than a unix socket path may be (%d bytes)\n", path, unixPathMax-1)
		return noControl{}, nil
	}
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = ln.Close()
		return nil, err
	}
	var one sync.Mutex
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				var req controlRequest
				line, err := bufio.NewReader(conn).ReadBytes('\n')
				if err == nil {
					err = json.Unmarshal(line, &req)
				}
				var answer controlAnswer
				if err != nil {
					answer.Error = fmt.Sprintf("bad control request: %v", err)
				} else {
					one.Lock()
					answer.Message, err = s.handle(req)
					one.Unlock()
					if err != nil {
						answer.Error = err.Error()
					}
				}
				data, _ := json.Marshal(answer)
				_, _ = conn.Write(append(data, '\n'))
			}()
		}
	}()
	return ln, nil
}

func (s *supervisor) handle(req controlRequest) (string, error) {
	if !KnownComponent(req.Component) {
		return "", unknownComponent(req.Component)
	}
	switch req.Command {
	case "stop":
		return s.stopComponent(req.Component, req.Kill, req.Grace)
	case "start":
		return s.startComponent(req.Component, req.Timeout)
	}
	return "", fmt.Errorf("unknown control command %q", req.Command)
}

func unknownComponent(name string) error {
	return fmt.Errorf("unknown component %q: one of %s", name, strings.Join(Components, ", "))
}

// stopComponent stops a component on request: its exit does not stop the cluster.
func (s *supervisor) stopComponent(name string, kill bool, grace time.Duration) (string, error) {
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		return "", errors.New("the cluster is stopping")
	}
	c := s.latestLocked(name)
	if c == nil {
		s.mu.Unlock()
		return "", fmt.Errorf("%s is not part of this cluster", name)
	}
	if c.requested {
		s.mu.Unlock()
		return "", fmt.Errorf("%s is already stopped in %s: start it with `pie-cluster start-component --dir %s %s`", name, s.st.dir, s.st.dir, name)
	}
	c.requested = true
	s.mu.Unlock()
	begin := time.Now()
	stop(c, kill, grace)
	return fmt.Sprintf("stopped %s (pid %d, %s) in %.1f s", name, c.cmd.Process.Pid, exitText(c), time.Since(begin).Seconds()), nil
}

// startComponent starts a component stopped on request again, with the same arguments (so the
// same ports, certificates and identity), and waits until it is healthy.
func (s *supervisor) startComponent(name string, timeout time.Duration) (string, error) {
	s.mu.Lock()
	old := s.latestLocked(name)
	if old == nil {
		s.mu.Unlock()
		return "", fmt.Errorf("%s is not part of this cluster", name)
	}
	if !old.requested {
		s.mu.Unlock()
		return "", fmt.Errorf("%s is already running in %s (pid %d)", name, s.st.dir, old.cmd.Process.Pid)
	}
	c, err := s.startLocked(name, old.args)
	if err != nil {
		s.mu.Unlock()
		return "", err
	}
	for i := range s.running {
		if s.running[i] == old {
			s.running[i] = c
		}
	}
	s.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	detail := ""
	for {
		ok, d := s.healthy(ctx, name, c.begin)
		if ok {
			return fmt.Sprintf("started %s (pid %d), healthy after %.1f s", name, c.cmd.Process.Pid, time.Since(c.begin).Seconds()), nil
		}
		if d != "" {
			detail = d
		}
		select {
		case <-c.exited:
			return "", fmt.Errorf("%s exited while starting (%s), which stops the cluster; its log: %s", name, exitText(c), s.st.path("logs", name+".log"))
		case <-s.halt:
			return "", fmt.Errorf("the cluster stopped while %s was starting", name)
		case <-ctx.Done():
			return "", fmt.Errorf("%s (pid %d) is not healthy after %s (%s); its log: %s", name, c.cmd.Process.Pid, timeout, detail, s.st.path("logs", name+".log"))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// StopComponent is `pie-cluster stop-component`: it asks the supervisor of dir to stop a
// component and returns the exit code once it has exited.
func StopComponent(dir, name string, kill bool, grace time.Duration) int {
	return control(dir, controlRequest{Command: "stop", Component: name, Kill: kill, Grace: grace}, grace)
}

// StartComponent is `pie-cluster start-component`: it asks the supervisor of dir to start a
// component it stopped on request, and returns the exit code once that is healthy.
func StartComponent(dir, name string, timeout time.Duration) int {
	return control(dir, controlRequest{Command: "start", Component: name, Timeout: timeout}, timeout)
}

// control sends one request and prints the answer: the message on stdout (exit code 0) or the
// error as one line on stderr (1). wait is how long the supervisor may take.
func control(dir string, req controlRequest, wait time.Duration) int {
	if !KnownComponent(req.Component) {
		return fail("%v", unknownComponent(req.Component))
	}
	st := state{dir: dir}
	if err := st.checkRunning(); err != nil {
		return fail("%v", err)
	}
	path := st.path(controlSocket)
	if len(path) >= unixPathMax {
		return fail("cannot reach the supervisor of %s: %s is longer than a unix socket path may be (%d bytes); use a shorter --dir", dir, path, unixPathMax-1)
	}
	conn, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		if _, statErr := os.Stat(st.path("ready")); statErr != nil {
			return fail("the local cluster in %s is not ready yet (no control socket)", dir)
		}
		return fail("cannot reach the supervisor of %s: %v", dir, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(wait + 30*time.Second))
	data, _ := json.Marshal(req)
	if _, err := conn.Write(append(data, '\n')); err != nil {
		return fail("asking the supervisor of %s: %v", dir, err)
	}
	line, err := bufio.NewReader(conn).ReadBytes('\n')
	if err != nil {
		return fail("no answer from the supervisor of %s: %v", dir, err)
	}
	var answer controlAnswer
	if err := json.Unmarshal(line, &answer); err != nil {
		return fail("bad answer from the supervisor of %s: %v", dir, err)
	}
	if answer.Error != "" {
		return fail("%s", answer.Error)
	}
	fmt.Println(answer.Message)
	return 0
}
