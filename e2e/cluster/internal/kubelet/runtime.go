package kubelet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	"github.com/pie-rs/pie/e2e/cluster/internal/container"
	"github.com/pie-rs/pie/e2e/cluster/internal/faults"
	"github.com/pie-rs/pie/e2e/cluster/internal/proc"
)

// process is one running container.
type process struct {
	cmd     *exec.Cmd
	exited  chan struct{}
	started metav1.Time
	code    int32
}

func fieldPath(c *v1.Container, init bool) string {
	if init {
		return fmt.Sprintf("spec.initContainers{%s}", c.Name)
	}
	return fmt.Sprintf("spec.containers{%s}", c.Name)
}

// runContainer pulls, starts and restarts one container as the Pod's restartPolicy says, until
// it is done or the Pod ends. True when it finished with exit code 0.
func (w *podWorker) runContainer(ctx context.Context, c *v1.Container, volumes map[string]mountSource, init bool) bool {
	path := fieldPath(c, init)
	policy := w.latest().Spec.RestartPolicy
	var restarts int32
	for attempt := 0; ; attempt++ {
		img, ok := w.pull(ctx, c, path, init)
		if !ok {
			return false
		}
		proc, err := w.start(ctx, c, img, volumes, restarts, path, init)
		var code int32
		if errors.Is(err, errConfig) {
			if !sleep(w.term, backOff(attempt)) {
				return false
			}
			continue
		}
		if err != nil {
			code = 128
		} else {
			var killed bool
			if code, killed = w.wait(ctx, proc, c, path, init); killed {
				return false
			}
		}
		if code == 0 && (init || policy != v1.RestartPolicyAlways) || policy == v1.RestartPolicyNever {
			return code == 0
		}
		restarts++
		delay := backOff(attempt)
		w.event(path, v1.EventTypeWarning, "BackOff", "Back-off restarting failed container %s in pod %s", c.Name, w.latest().Name)
		w.setContainer(c.Name, init, func(s *v1.ContainerStatus) {
			s.LastTerminationState = s.State
			s.State = v1.ContainerState{Waiting: &v1.ContainerStateWaiting{
				Reason:  "CrashLoopBackOff",
				Message: fmt.Sprintf("back-off %s restarting failed container=%s pod=%s", delay, c.Name, w.latest().Name),
			}}
			s.RestartCount, s.Ready, s.Started = restarts, false, ptr.To(false)
		})
		w.pushStatus(ctx)
		if !sleep(w.term, delay) {
			return false
		}
	}
}

// pull resolves the container's image through the image map, with kubelet's Events and
// back-off; false when the Pod ends first.
func (w *podWorker) pull(ctx context.Context, c *v1.Container, path string, init bool) (Image, bool) {
	node := w.latest().Spec.NodeName
	for attempt := 0; ; attempt++ {
		img, found := w.k.cfg.Images.Lookup(c.Image)
		failing, err := faults.ParseWord(faults.ImagePull, w.k.nodeAnnotation(node, faults.ImagePull), "fail")
		if err != nil {
			klog.ErrorS(err, "ignoring fault", "node", node)
		}
		if found && !failing {
			if c.ImagePullPolicy == v1.PullAlways {
				w.event(path, v1.EventTypeNormal, "Pulling", "Pulling image %q", c.Image)
				w.event(path, v1.EventTypeNormal, "Pulled", "Successfully pulled image %q in 1ms (1ms including waiting). Image size: 0 bytes.", c.Image)
			} else {
				w.event(path, v1.EventTypeNormal, "Pulled", "Container image %q already present on machine", c.Image)
			}
			return img, true
		}
		reason, message := "ErrImagePull", ""
		if c.ImagePullPolicy == v1.PullNever {
			reason = "ErrImageNeverPull"
			message = fmt.Sprintf("Container image %q is not present with pull policy of Never", c.Image)
			w.event(path, v1.EventTypeWarning, reason, "%s", message)
		} else {
			cause := fmt.Sprintf("rpc error: code = NotFound desc = failed to pull and unpack image %q: not found (no such image in pie-cluster's image map)", c.Image)
			if failing {
				cause = fmt.Sprintf("rpc error: code = Unavailable desc = failed to pull and unpack image %q: fault injected by %s on node %s", c.Image, faults.ImagePull, node)
			}
			message = cause
			w.event(path, v1.EventTypeNormal, "Pulling", "Pulling image %q", c.Image)
			w.event(path, v1.EventTypeWarning, "Failed", "Failed to pull image %q: %s", c.Image, cause)
			w.event(path, v1.EventTypeWarning, "Failed", "Error: %s", reason)
		}
		w.setWaiting(c.Name, init, reason, message)
		w.pushStatus(ctx)
		if !sleep(w.term, time.Second) {
			return Image{}, false
		}
		if reason == "ErrImagePull" {
			w.event(path, v1.EventTypeNormal, "BackOff", "Back-off pulling image %q", c.Image)
			w.event(path, v1.EventTypeWarning, "Failed", "Error: ImagePullBackOff")
			w.setWaiting(c.Name, init, "ImagePullBackOff", fmt.Sprintf("Back-off pulling image %q: %s", c.Image, reason))
			w.pushStatus(ctx)
		}
		if !sleep(w.term, backOff(attempt)) {
			return Image{}, false
		}
	}
}

func (w *podWorker) setWaiting(name string, init bool, reason, message string) {
	w.setContainer(name, init, func(s *v1.ContainerStatus) {
		s.State = v1.ContainerState{Waiting: &v1.ContainerStateWaiting{Reason: reason, Message: message}}
		s.Ready, s.Started = false, ptr.To(false)
	})
}

// errConfig marks a container that cannot be configured yet (CreateContainerConfigError): the
// kubelet retries it without counting a restart.
var errConfig = errors.New("container configuration")

// start runs container-init for the container. A configuration error leaves the container
// waiting; a start error terminates it with StartError, as containerd does.
func (w *podWorker) start(ctx context.Context, c *v1.Container, img Image, volumes map[string]mountSource, restarts int32, path string, init bool) (*process, error) {
	pod := w.latest()
	spec, err := w.containerSpec(ctx, pod, c, img, volumes)
	if err != nil {
		w.event(path, v1.EventTypeWarning, "Failed", "Error: %v", err)
		w.setWaiting(c.Name, init, "CreateContainerConfigError", err.Error())
		w.pushStatus(ctx)
		return nil, fmt.Errorf("%w: %v", errConfig, err)
	}
	dir := filepath.Join(w.k.podDir(w.uid), "containers", fmt.Sprintf("%s-%d", c.Name, restarts))
	spec.Root = filepath.Join(dir, "rootfs")
	proc, err := w.exec(dir, spec)
	id := containerID(w.uid, c.Name, restarts)
	if err != nil {
		now := metav1.Now()
		w.event(path, v1.EventTypeWarning, "Failed", "Error: failed to create containerd task: failed to create shim task: %v", err)
		w.setContainer(c.Name, init, func(s *v1.ContainerStatus) {
			s.State = v1.ContainerState{Terminated: &v1.ContainerStateTerminated{
				ExitCode: 128, Reason: "StartError", Message: err.Error(), StartedAt: now, FinishedAt: now, ContainerID: id,
			}}
			s.ContainerID, s.RestartCount, s.Ready, s.Started = id, restarts, false, ptr.To(false)
		})
		w.pushStatus(ctx)
		return nil, err
	}
	w.event(path, v1.EventTypeNormal, "Created", "Created container: %s", c.Name)
	w.event(path, v1.EventTypeNormal, "Started", "Started container %s", c.Name)
	ready := c.ReadinessProbe == nil || init
	w.setContainer(c.Name, init, func(s *v1.ContainerStatus) {
		s.State = v1.ContainerState{Running: &v1.ContainerStateRunning{StartedAt: proc.started}}
		s.ContainerID, s.ImageID, s.RestartCount = id, c.Image, restarts
		s.Ready, s.Started = ready, ptr.To(true)
	})
	w.pushStatus(ctx)
	if !ready {
		go w.probeReadiness(ctx, c, proc)
	}
	return proc, nil
}

// exec starts container-init in a new mount namespace and waits for it to report: a setup
// error, or the exec of the container's command (the status pipe closes empty).
func (w *podWorker) exec(dir string, spec container.Spec) (*process, error) {
	if err := os.MkdirAll(spec.Root, 0o755); err != nil {
		return nil, err
	}
	specFile := filepath.Join(dir, "spec.json")
	data, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(specFile, data, 0o600); err != nil {
		return nil, err
	}
	log, err := os.OpenFile(filepath.Join(dir, "log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	statusR, statusW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer statusR.Close()
	cmd := exec.Command(w.k.cfg.Self, "container-init", "--spec", specFile)
	cmd.Env = []string{}
	cmd.Stdout, cmd.Stderr = log, log
	cmd.ExtraFiles = []*os.File{statusW}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS,
		Setpgid:    true,
		Pdeathsig:  syscall.SIGKILL,
	}
	err = cmd.Start()
	statusW.Close()
	if err != nil {
		return nil, err
	}
	pidFile := w.k.recordContainer(cmd.Process.Pid)
	report, _ := io.ReadAll(statusR)
	proc := &process{cmd: cmd, exited: make(chan struct{}), started: metav1.Now()}
	go func() {
		err := cmd.Wait()
		proc.code = exitCode(cmd, err)
		// The group may outlive its leader (a child of the command): end it with the container.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if pidFile != "" {
			_ = os.Remove(pidFile)
		}
		close(proc.exited)
	}()
	if len(report) > 0 {
		<-proc.exited
		return nil, errors.New(string(report))
	}
	return proc, nil
}

func exitCode(cmd *exec.Cmd, err error) int32 {
	if cmd.ProcessState == nil {
		return 128
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int32(ws.Signal())
	}
	if err != nil && cmd.ProcessState.ExitCode() < 0 {
		return 128
	}
	return int32(cmd.ProcessState.ExitCode())
}

// wait waits for the container to exit, or kills it when the Pod ends (SIGTERM, SIGKILL after
// the grace period). It records the terminated state; killed is true when the Pod ended.
func (w *podWorker) wait(ctx context.Context, proc *process, c *v1.Container, path string, init bool) (code int32, killed bool) {
	select {
	case <-proc.exited:
	case <-w.term.Done():
		killed = true
		w.mu.Lock()
		stopping := w.stopping
		w.mu.Unlock()
		grace := w.gracePeriod()
		if stopping {
			grace = 2 * time.Second
		} else {
			w.event(path, v1.EventTypeNormal, "Killing", "Stopping container %s", c.Name)
		}
		pgid := proc.cmd.Process.Pid
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-proc.exited:
		case <-time.After(grace):
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-proc.exited
		}
	}
	now := metav1.Now()
	reason := "Completed"
	if proc.code != 0 {
		reason = "Error"
	}
	w.setContainer(c.Name, init, func(s *v1.ContainerStatus) {
		s.State = v1.ContainerState{Terminated: &v1.ContainerStateTerminated{
			ExitCode: proc.code, Reason: reason, StartedAt: proc.started, FinishedAt: now, ContainerID: s.ContainerID,
		}}
		s.Ready, s.Started = false, ptr.To(false)
	})
	w.pushStatus(ctx)
	return proc.code, killed
}

// recordContainer writes pids/container-<pgid> (see Config.PidDir) and returns its path.
func (k *Kubelet) recordContainer(pid int) string {
	if k.cfg.PidDir == "" {
		return ""
	}
	path := filepath.Join(k.cfg.PidDir, fmt.Sprintf("container-%d", pid))
	if err := proc.Record(path, pid); err != nil {
		return ""
	}
	return path
}
