// Package supervisor starts, watches and stops the local cluster: embedded etcd,
// kube-apiserver, kube-controller-manager and kube-scheduler (each a process of the
// pie-cluster binary), the process kubelet and the test provisioner, all on 127.0.0.1, all
// state in one directory. A component that exits stops the whole cluster with one line that
// names it and its log, unless it was stopped on request (`pie-cluster stop-component`, over
// the supervisor's control socket): then it stays stopped until `start-component` starts it
// again with the same arguments.
package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/pie-rs/pie/e2e/cluster/internal/kubelet"
	"github.com/pie-rs/pie/e2e/cluster/internal/pki"
)

// Options of `pie-cluster up`.
type Options struct {
	Dir   string
	Nodes int
	// NodePrefix names the nodes <prefix>1..<prefix>N.
	NodePrefix string
	// Images are --image flags of the process kubelet (REFERENCE=BINARY[,user=..][,cmd=..]).
	Images []string
	// APIServerPort 0 picks a free port.
	APIServerPort int
	Timeout       time.Duration
	// Foreground runs the supervisor in this process; StopOnStdinEOF stops the cluster when
	// stdin closes (the e2e harness holds the other end, so the cluster dies with the tests).
	Foreground     bool
	StopOnStdinEOF bool
	// RemoveDir deletes the state directory once everything is stopped (the e2e harness's
	// temp dirs).
	RemoveDir bool
	// Self is the pie-cluster binary.
	Self string
	// Heartbeat is the nodes' Lease renewal interval (0: kubelet's 10 s); the controller
	// manager's node-monitor grace period is two of them (at least 20 s).
	Heartbeat time.Duration
	// DisabledControllers are kube-controller-manager controllers not to run (a scale bench
	// that measures object management alone runs no cronjob-controller).
	DisabledControllers []string
}

// component is one process of the cluster: one run of it (a restart is a new component with
// the same name and arguments).
type component struct {
	name  string
	args  []string
	cmd   *exec.Cmd
	begin time.Time
	// exited is closed once the process has exited and cmd.ProcessState is set.
	exited chan struct{}
	// requested: it is being stopped, or was stopped, on request; its exit is not fatal.
	// Guarded by supervisor.mu.
	requested bool
}

type supervisor struct {
	opts  Options
	st    state
	files pki.Files
	ports ports
	// exited receives each component that exits.
	exited chan *component

	mu sync.Mutex
	// running holds the latest run of each component, in start order.
	running []*component
	// shutdown is set, and halt closed, once stopAll has begun: no component is started any
	// more.
	shutdown bool
	halt     chan struct{}
	// client is the admin client of the health checks; nodes are the kubelet's.
	client kubernetes.Interface
	nodes  []string
}

type ports struct {
	etcdClient, etcdPeer, apiserver int
	controllerManager, scheduler    int
	provisioner                     int
}

// identities of the cluster's own clients. The kubelet and the provisioner are privileged
// (system:masters); the controller manager and scheduler run as their real identities with
// the bootstrap RBAC the apiserver creates.
var identities = []pki.Identity{
	{Name: "admin", User: "pie-cluster:admin", Groups: []string{"system:masters"}},
	{Name: "kube-controller-manager", User: "system:kube-controller-manager"},
	{Name: "kube-scheduler", User: "system:kube-scheduler"},
	{Name: "kubelet", User: "pie-cluster:kubelet", Groups: []string{"system:masters"}},
	{Name: "provisioner", User: "pie-cluster:provisioner", Groups: []string{"system:masters"}},
	{Name: "apiserver-kubelet-client", User: "kube-apiserver-kubelet-client", Groups: []string{"system:masters"}},
}

// Up starts a cluster and returns when it is ready (exit code 0) or failed (1, after one line
// on stderr). Without Foreground the supervisor goes on in the background.
func Up(opts Options) int {
	st := state{dir: opts.Dir}
	if opts.Nodes < 1 {
		return fail("--nodes must be at least 1, not %d", opts.Nodes)
	}
	if opts.Heartbeat < 0 || (opts.Heartbeat > 0 && opts.Heartbeat < time.Second) {
		return fail("--node-heartbeat must be at least 1s, not %s", opts.Heartbeat)
	}
	if err := checkDisabledControllers(opts.DisabledControllers); err != nil {
		return fail("%v", err)
	}
	for _, img := range opts.Images {
		if _, _, err := kubelet.ParseImageFlag(img); err != nil {
			return fail("%v", err)
		}
	}
	if opts.APIServerPort != 0 {
		if err := portFree(opts.APIServerPort); err != nil {
			return fail("%v", err)
		}
	}
	if opts.Foreground {
		note, err := st.prepare()
		if err != nil {
			return fail("%v", err)
		}
		if note != "" {
			fmt.Fprintln(os.Stderr, "pie-cluster: "+note)
		}
		return supervise(opts)
	}
	// In the background: the supervisor is a new session of its own whose output goes to
	// logs/supervisor.log; this process waits for it to say ready or failed.
	note, err := st.prepare()
	if err != nil {
		return fail("%v", err)
	}
	if note != "" {
		fmt.Fprintln(os.Stderr, "pie-cluster: "+note)
	}
	log, err := os.OpenFile(st.path("logs", "supervisor.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fail("%v", err)
	}
	defer log.Close()
	args := []string{"supervise", "--dir", opts.Dir, "--nodes", strconv.Itoa(opts.Nodes),
		"--node-prefix", opts.NodePrefix, "--apiserver-port", strconv.Itoa(opts.APIServerPort),
		"--timeout", opts.Timeout.String(), "--node-heartbeat", opts.Heartbeat.String()}
	for _, img := range opts.Images {
		args = append(args, "--image", img)
	}
	for _, c := range opts.DisabledControllers {
		args = append(args, "--disable-controller", c)
	}
	cmd := exec.Command(opts.Self, args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fail("starting the supervisor: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	for {
		if ready, err := os.ReadFile(st.path("ready")); err == nil {
			fmt.Print(string(ready))
			fmt.Printf("stop it with: task cluster:down (or %s down --dir %s)\n", opts.Self, opts.Dir)
			return 0
		}
		select {
		case <-exited:
			why, err := os.ReadFile(st.path("failed"))
			if err != nil {
				why = []byte(fmt.Sprintf("the supervisor exited; its log: %s", st.path("logs", "supervisor.log")))
			}
			fmt.Fprintln(os.Stderr, "pie-cluster: "+strings.TrimSpace(string(why)))
			return 1
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Supervise is the background supervisor (`pie-cluster supervise`): the state directory is
// already prepared by `up`.
func Supervise(opts Options) int { return supervise(opts) }

func supervise(opts Options) int {
	s := &supervisor{opts: opts, st: state{dir: opts.Dir}, exited: make(chan *component, 16), halt: make(chan struct{})}
	if err := s.st.recordSupervisor(); err != nil {
		return s.failed("%v", err)
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	stdinClosed := make(chan struct{})
	if opts.StopOnStdinEOF {
		go func() { _, _ = io.Copy(io.Discard, os.Stdin); close(stdinClosed) }()
	}
	ctx, cancel := context.WithTimeout(context.Background(), opts.Timeout)
	defer cancel()
	// One goroutine takes the stop request (a signal or stdin's end) and closes stopping, which
	// both the start (through ctx) and the wait below see.
	stopping := make(chan struct{})
	go func() {
		select {
		case <-stop:
		case <-stdinClosed:
		}
		close(stopping)
		cancel()
	}()

	summary, err := s.start(ctx)
	if err != nil {
		s.stopAll()
		if errors.Is(ctx.Err(), context.Canceled) {
			return s.failed("stopped while starting")
		}
		return s.failed("%v", err)
	}
	// The control socket is there before `ready` says the cluster is.
	control, err := s.serveControl()
	if err != nil {
		s.stopAll()
		return s.failed("control socket: %v", err)
	}
	defer control.Close()
	if err := os.WriteFile(s.st.path("ready"), []byte(summary), 0o644); err != nil {
		s.stopAll()
		return s.failed("%v", err)
	}
	if opts.Foreground {
		fmt.Print(summary)
	}
	for done := false; !done; {
		select {
		case <-stopping:
			done = true
		case c := <-s.exited:
			if s.stoppedOnRequest(c) {
				continue
			}
			why := fmt.Sprintf("%s exited unexpectedly (%v); its log: %s", c.name, exitText(c), s.st.path("logs", c.name+".log"))
			s.stopAll()
			return s.failed("%s", why)
		}
	}
	s.stopAll()
	if opts.RemoveDir {
		if err := os.RemoveAll(s.st.dir); err != nil {
			return fail("stopped, but could not remove %s: %v", s.st.dir, err)
		}
		return 0
	}
	_ = os.Remove(s.st.path("ready"))
	_ = os.Remove(s.st.path("supervisor.pid"))
	return 0
}

// exitText is how a component that has exited ended ("exit status 1", "signal: killed").
func exitText(c *component) string {
	select {
	case <-c.exited:
		return c.cmd.ProcessState.String()
	default:
		return "still running"
	}
}

func (s *supervisor) stoppedOnRequest(c *component) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return c.requested
}

// failed records why the cluster stopped, says it on stderr and returns exit code 1.
func (s *supervisor) failed(format string, args ...any) int {
	why := fmt.Sprintf(format, args...)
	_ = os.WriteFile(s.st.path("failed"), []byte(why+"\n"), 0o644)
	_ = os.Remove(s.st.path("supervisor.pid"))
	fmt.Fprintln(os.Stderr, "pie-cluster: "+why)
	return 1
}

func fail(format string, args ...any) int {
	fmt.Fprintf(os.Stderr, "pie-cluster: "+format+"\n", args...)
	return 1
}

// spawn starts a component (a pie-cluster subcommand) with its output in logs/<name>.log and
// adds it to running. It dies with the supervisor (parent-death signal) and is recorded in
// pids/.
func (s *supervisor) spawn(name string, args ...string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, err := s.startLocked(name, args)
	if err != nil {
		return err
	}
	s.running = append(s.running, c)
	return nil
}

// startLocked starts one run of a component; s.mu is held.
func (s *supervisor) startLocked(name string, args []string) (*component, error) {
	if s.shutdown {
		return nil, fmt.Errorf("not starting %s: the cluster is stopping", name)
	}
	log, err := os.OpenFile(s.st.path("logs", name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	cmd := exec.Command(s.opts.Self, append([]string{name}, args...)...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = append(os.Environ(), "PIE_CLUSTER_DIR="+s.opts.Dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	c := &component{name: name, args: args, cmd: cmd, begin: time.Now(), exited: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	_ = s.st.writePid(name, cmd.Process.Pid)
	go func() {
		_ = cmd.Wait()
		close(c.exited)
		select {
		case s.exited <- c:
		default:
		}
	}()
	return c, nil
}

// stopAll stops the components in reverse start order: SIGTERM, SIGKILL after 15 s. Nothing
// is started after it has begun.
func (s *supervisor) stopAll() {
	s.mu.Lock()
	if !s.shutdown {
		s.shutdown = true
		close(s.halt)
	}
	running := s.running
	s.running = nil
	s.mu.Unlock()
	for i := len(running) - 1; i >= 0; i-- {
		stop(running[i], false, 15*time.Second)
	}
	s.st.killLeftovers()
}

// stop ends a component, SIGTERM then SIGKILL to its process group after grace (at once with
// kill), and returns once it has exited.
func stop(c *component, kill bool, grace time.Duration) {
	select {
	case <-c.exited:
		return
	default:
	}
	if kill {
		_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
	} else {
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-c.exited:
	case <-time.After(grace):
		_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		<-c.exited
	}
}

// waitFor polls check until it passes, a component exits, or ctx ends. what names the
// condition in the error.
func (s *supervisor) waitFor(ctx context.Context, what string, check func(context.Context) (bool, string)) error {
	detail := ""
	for {
		ok, d := check(ctx)
		if ok {
			return nil
		}
		if d != "" {
			detail = d
		}
		select {
		case c := <-s.exited:
			return fmt.Errorf("%s exited while waiting for %s (%v); its log: %s", c.name, what, exitText(c), s.st.path("logs", c.name+".log"))
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				if detail != "" {
					detail = " (" + detail + ")"
				}
				return fmt.Errorf("timed out after %s waiting for %s%s; logs in %s", s.opts.Timeout, what, detail, s.st.path("logs"))
			}
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// The cluster's ports come from here, below the kernel's ephemeral range (32768 and up by
// default) and apart from the ranges of pie's scripts (16000..20000) and Rust test harness
// (20000..32768): a port the kernel picks for net.Listen(":0") or for an outgoing connection may
// be picked again, for another process, before the component that was meant to have it binds it.
const portLow, portHigh = 10000, 16000

// nextPort walks the range from a random start, so that two clusters started at once (the tests
// run several) take different ports.
var nextPort atomic.Uint32

func init() { nextPort.Store(rand.Uint32N(portHigh - portLow)) }

// freePort returns a port of the range that is free on 127.0.0.1 now and that this process has
// not handed out before.
func freePort() (int, error) {
	for range portHigh - portLow {
		port := portLow + int(nextPort.Add(1)%(portHigh-portLow))
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err == nil {
			return port, ln.Close()
		}
	}
	return 0, fmt.Errorf("no free port on 127.0.0.1 in %d..%d", portLow, portHigh)
}

func portFree(port int) error {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return fmt.Errorf("127.0.0.1:%d is in use (%v): choose another --apiserver-port or 0 for a free one", port, err)
	}
	return ln.Close()
}

// Down stops the cluster of a state directory.
func Down(dir string) int {
	st := state{dir: dir}
	if _, err := os.Stat(st.path(marker)); err != nil {
		fmt.Printf("no local cluster in %s\n", dir)
		return 0
	}
	pid := st.supervisorPid()
	if pid == 0 {
		killed := st.killLeftovers()
		msg := fmt.Sprintf("no local cluster is running in %s", dir)
		if why, err := os.ReadFile(st.path("failed")); err == nil {
			msg += "; it had stopped: " + strings.TrimSpace(string(why))
		}
		if killed > 0 {
			msg += fmt.Sprintf(" (stopped %d processes it had left running)", killed)
		}
		fmt.Println(msg)
		return 0
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(90 * time.Second)
	for st.supervisorPid() != 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if st.supervisorPid() != 0 {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	st.killLeftovers()
	fmt.Printf("stopped the local cluster in %s (logs kept in %s)\n", dir, st.path("logs"))
	return 0
}
