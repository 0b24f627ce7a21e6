package supervisor

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/pie-rs/pie/e2e/cluster/internal/proc"
)

// The state directory (PIE_CLUSTER_DIR) holds everything of one cluster:
//
//	kubeconfig          the admin kubeconfig
//	ready               written once the cluster is up (what `up` printed)
//	cluster.json        its endpoints (apiserver, etcd) and service-account issuer and key
//	supervisor.sock     the supervisor's control socket (stop-component, start-component)
//	failed              why the supervisor stopped the cluster, if it did
//	supervisor.pid      the supervisor process
//	pids/               one file per component and container process group: "PID STARTTIME"
//	logs/               one log per component; audit.log of the apiserver
//	pki/, kubeconfigs/  certificates, keys and the components' kubeconfigs
//	etcd/, pods/, volumes/
const marker = ".pie-cluster"

type state struct{ dir string }

func (s state) path(parts ...string) string {
	return filepath.Join(append([]string{s.dir}, parts...)...)
}

// writePid records a process in pids/<name>.
func (s state) writePid(name string, pid int) error {
	return proc.Record(s.path("pids", name), pid)
}

// recorded is a process of pids/ that still runs (same PID and start time).
type recorded struct {
	name string
	pid  int
}

func (s state) running() []recorded {
	var out []recorded
	entries, _ := os.ReadDir(s.path("pids"))
	for _, e := range entries {
		if pid, ok := proc.Running(s.path("pids", e.Name())); ok {
			out = append(out, recorded{name: e.Name(), pid: pid})
		}
	}
	return out
}

// supervisorPid is the running supervisor of the state directory, or 0.
func (s state) supervisorPid() int {
	pid, ok := proc.Running(s.path("supervisor.pid"))
	if !ok {
		return 0
	}
	return pid
}

// killLeftovers SIGKILLs every recorded process still running (process groups for
// containers) and says how many there were.
func (s state) killLeftovers() int {
	procs := s.running()
	for _, p := range procs {
		if strings.HasPrefix(p.name, "container-") {
			_ = syscall.Kill(-p.pid, syscall.SIGKILL)
		}
		_ = syscall.Kill(p.pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(s.running()) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	return len(procs)
}

// prepare makes the state directory ready for a new cluster: refuses a running one and a
// directory that is not a pie-cluster's, and clears a stale one (killing what it left).
func (s state) prepare() (note string, err error) {
	entries, err := os.ReadDir(s.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return "", s.create()
	}
	if err != nil {
		return "", err
	}
	if len(entries) > 0 {
		if _, err := os.Stat(s.path(marker)); err != nil {
			return "", fmt.Errorf("%s exists and is not a pie-cluster state directory: choose another PIE_CLUSTER_DIR (or remove it)", s.dir)
		}
		if pid := s.supervisorPid(); pid != 0 {
			return "", fmt.Errorf("a local cluster is already running in %s (supervisor pid %d): use it (KUBECONFIG=%s) or stop it with `task cluster:down`", s.dir, pid, s.path("kubeconfig"))
		}
		killed := s.killLeftovers()
		note = fmt.Sprintf("cleared the stale cluster state in %s", s.dir)
		if killed > 0 {
			note += fmt.Sprintf(" (stopped %d processes it had left running)", killed)
		}
		if err := os.RemoveAll(s.dir); err != nil {
			return "", fmt.Errorf("clearing stale state %s: %w", s.dir, err)
		}
	}
	return note, s.create()
}

func (s state) create() error {
	for _, d := range []string{"", "pids", "logs", "pki", "kubeconfigs", "etcd", "pods", "volumes"} {
		if err := os.MkdirAll(s.path(d), 0o755); err != nil {
			return err
		}
	}
	return os.WriteFile(s.path(marker), []byte("state directory of pie-cluster (e2e/cluster)\n"), 0o644)
}

func (s state) recordSupervisor() error {
	return proc.Record(s.path("supervisor.pid"), os.Getpid())
}

// clusterInfo is cluster.json: what the commands that work on a running cluster (compact,
// token) need to know of it.
type clusterInfo struct {
	APIServer            string `json:"apiserver"`
	Etcd                 string `json:"etcd"`
	ServiceAccountIssuer string `json:"serviceAccountIssuer"`
	ServiceAccountKey    string `json:"serviceAccountKey"`
}

func (s state) writeInfo(info clusterInfo) error {
	data, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(s.path("cluster.json"), append(data, '\n'), 0o644)
}

// runningInfo is cluster.json of the cluster running in the directory; the error says when
// none is (checkRunning).
func (s state) runningInfo() (clusterInfo, error) {
	var info clusterInfo
	if err := s.checkRunning(); err != nil {
		return info, err
	}
	data, err := os.ReadFile(s.path("cluster.json"))
	if err != nil {
		return info, err
	}
	if err := json.Unmarshal(data, &info); err != nil {
		return info, fmt.Errorf("%s: %w", s.path("cluster.json"), err)
	}
	return info, nil
}

// checkRunning checks that the directory holds a running cluster; the error says what is
// there instead, as `down` would ("no local cluster in D", "no local cluster is running in D;
// it had stopped: WHY").
func (s state) checkRunning() error {
	if _, err := os.Stat(s.path(marker)); err != nil {
		return fmt.Errorf("no local cluster in %s", s.dir)
	}
	if s.supervisorPid() == 0 {
		msg := fmt.Sprintf("no local cluster is running in %s", s.dir)
		if why, err := os.ReadFile(s.path("failed")); err == nil {
			msg += "; it had stopped: " + strings.TrimSpace(string(why))
		}
		return errors.New(msg)
	}
	return nil
}
