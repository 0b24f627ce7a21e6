// Package faults names the annotations that break the local cluster on demand, and parses
// them. Tests set them with kubectl or any client (docs/testing.md lists them):
//
//	kubectl annotate node pie-node-2 faults.pie.test/mount=fail
//	kubectl annotate storageclass pie-local faults.pie.test/provision=delay=20s
//
// A fault applies to operations that start after it is set; removing the annotation heals.
package faults

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// Prefix of every fault annotation.
const Prefix = "faults.pie.test/"

// Annotations of a Node (the process kubelet reads them).
const (
	// Ready "false": the kubelet reports Ready=False (KubeletNotReady) but keeps its heartbeats.
	Ready = Prefix + "ready"
	// Heartbeat "stop": no more Lease renewals or status updates, so the node lifecycle
	// controller marks the node Unknown and taints it unreachable, as for a node that died.
	Heartbeat = Prefix + "heartbeat"
	// StartDelay "<duration>": containers of new Pods start that much later (slow start).
	StartDelay = Prefix + "start-delay"
	// ImagePull "fail": every image pull fails (ErrImagePull, then ImagePullBackOff).
	ImagePull = Prefix + "image-pull"
)

// Annotations read on a Node, a StorageClass or a PersistentVolumeClaim: the fault applies to
// the volumes of that node, of that class, or of that claim.
const (
	// Mount "fail": MountVolume.SetUp fails (FailedMount) for PVC-backed volumes.
	Mount = Prefix + "mount"
	// IO "read-only" or "full": the volume is mounted read-only (EROFS), or as a file system
	// with no space left (ENOSPC).
	IO = Prefix + "io"
)

// Annotations of a StorageClass (the test provisioner reads them).
const (
	// Provision "fail", "delay=<duration>" or "hang" (no answer until the fault is removed).
	Provision = Prefix + "provision"
	// Delete "delay=<duration>" or "stuck" (every deletion attempt fails until removed).
	Delete = Prefix + "delete"
)

// Action is what a provisioner fault asks for.
type Action int

// The provisioner faults' actions.
const (
	None Action = iota
	Fail
	Delay
	Hang
	Stuck
)

// Op is a parsed provisioner fault.
type Op struct {
	Action Action
	Delay  time.Duration
}

// ParseProvision parses the value of Provision ("" is no fault).
func ParseProvision(v string) (Op, error) {
	return parseOp(Provision, v, map[string]Action{"fail": Fail, "hang": Hang})
}

// ParseDelete parses the value of Delete ("" is no fault).
func ParseDelete(v string) (Op, error) {
	return parseOp(Delete, v, map[string]Action{"stuck": Stuck})
}

func parseOp(key, v string, words map[string]Action) (Op, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return Op{}, nil
	}
	if a, ok := words[v]; ok {
		return Op{Action: a}, nil
	}
	if d, ok := strings.CutPrefix(v, "delay="); ok {
		delay, err := time.ParseDuration(d)
		if err != nil || delay < 0 {
			return Op{}, fmt.Errorf("%s=%q: delay is not a duration such as 20s", key, v)
		}
		return Op{Action: Delay, Delay: delay}, nil
	}
	allowed := slices.Sorted(maps.Keys(words))
	allowed = append(allowed, "delay=<duration>")
	return Op{}, fmt.Errorf("%s=%q: expected one of %s", key, v, strings.Join(allowed, ", "))
}

// IOFault is a parsed IO value.
type IOFault int

// The IO faults.
const (
	IONone IOFault = iota
	IOReadOnly
	IOFull
)

// ParseIO parses the value of IO ("" is no fault).
func ParseIO(v string) (IOFault, error) {
	switch strings.TrimSpace(v) {
	case "":
		return IONone, nil
	case "read-only":
		return IOReadOnly, nil
	case "full":
		return IOFull, nil
	}
	return IONone, fmt.Errorf("%s=%q: expected read-only or full", IO, v)
}

// ParseWord checks a fault whose only value is word ("" or "false" is no fault).
func ParseWord(key, v, word string) (bool, error) {
	switch strings.TrimSpace(v) {
	case "", "false":
		return false, nil
	case word:
		return true, nil
	}
	return false, fmt.Errorf("%s=%q: expected %s", key, v, word)
}

// ParseReady parses the value of Ready: true when the node must report NotReady.
func ParseReady(v string) (bool, error) {
	switch strings.TrimSpace(v) {
	case "", "true":
		return false, nil
	case "false":
		return true, nil
	}
	return false, fmt.Errorf("%s=%q: expected false", Ready, v)
}

// ParseStartDelay parses the value of StartDelay ("" is none).
func ParseStartDelay(v string) (time.Duration, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%s=%q: expected a duration such as 20s", StartDelay, v)
	}
	return d, nil
}
