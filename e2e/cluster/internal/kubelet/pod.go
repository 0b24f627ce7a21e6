package kubelet

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/retry"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	"github.com/pie-rs/pie/e2e/cluster/internal/faults"
)

// Back-off of image pulls and container restarts: kubelet's 10 s doubling up to 5 minutes.
const (
	backOffInitial = 10 * time.Second
	backOffMax     = 5 * time.Minute
)

// podWorker plays kubelet for one Pod, from its first sight to its deletion.
type podWorker struct {
	k   *Kubelet
	uid types.UID
	rec record.EventRecorder

	// term ends when the Pod is being deleted or the kubelet stops: containers are killed.
	term       context.Context
	cancelTerm context.CancelFunc

	mu       sync.Mutex
	pod      *v1.Pod // the latest from the watch
	removed  bool    // the object is gone
	stopping bool    // the kubelet stops: no API writes
	status   v1.PodStatus
}

func newPodWorker(k *Kubelet, pod *v1.Pod) *podWorker {
	term, cancel := context.WithCancel(context.Background())
	return &podWorker{k: k, uid: pod.UID, rec: k.recorders[pod.Spec.NodeName], term: term, cancelTerm: cancel, pod: pod}
}

func (w *podWorker) update(pod *v1.Pod) {
	w.mu.Lock()
	w.pod = pod
	w.mu.Unlock()
	if pod.DeletionTimestamp != nil {
		w.cancelTerm()
	}
}

func (w *podWorker) gone() {
	w.mu.Lock()
	w.removed = true
	w.mu.Unlock()
	w.cancelTerm()
}

func (w *podWorker) shutdown() {
	w.mu.Lock()
	w.stopping = true
	w.mu.Unlock()
	w.cancelTerm()
}

func (w *podWorker) latest() *v1.Pod {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pod
}

// gracePeriod is how long a container may take to stop after SIGTERM.
func (w *podWorker) gracePeriod() time.Duration {
	pod := w.latest()
	if pod.DeletionGracePeriodSeconds != nil {
		return time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
	}
	if pod.Spec.TerminationGracePeriodSeconds != nil {
		return time.Duration(*pod.Spec.TerminationGracePeriodSeconds) * time.Second
	}
	return 30 * time.Second
}

func (w *podWorker) run(ctx context.Context) {
	pod := w.latest()
	defer func() {
		if err := os.RemoveAll(w.k.podDir(w.uid)); err != nil {
			klog.ErrorS(err, "removing pod directory", "pod", klog.KObj(pod))
		}
	}()
	w.initStatus(pod)
	w.pushStatus(ctx)

	volumes, ok := w.mountVolumes(ctx)
	if ok {
		w.setCondition(v1.PodReadyToStartContainers, v1.ConditionTrue, "")
		w.pushStatus(ctx)
		ok = w.startDelay()
	}
	if ok {
		ok = w.runInitContainers(ctx, volumes)
	}
	if ok {
		w.setCondition(v1.PodInitialized, v1.ConditionTrue, "")
		var wg sync.WaitGroup
		for i := range pod.Spec.Containers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				w.runContainer(ctx, &pod.Spec.Containers[i], volumes, false)
			}()
		}
		wg.Wait()
	}
	w.finish(ctx)
}

// startDelay waits out a node's slow-start fault; false when the Pod ends meanwhile.
func (w *podWorker) startDelay() bool {
	node := w.latest().Spec.NodeName
	d, err := faults.ParseStartDelay(w.k.nodeAnnotation(node, faults.StartDelay))
	if err != nil {
		klog.ErrorS(err, "ignoring fault", "node", node)
	}
	return d == 0 || sleep(w.term, d)
}

// runInitContainers runs the init containers one after the other; false when one failed for
// good or the Pod ends.
func (w *podWorker) runInitContainers(ctx context.Context, volumes map[string]mountSource) bool {
	pod := w.latest()
	for i := range pod.Spec.InitContainers {
		if !w.runContainer(ctx, &pod.Spec.InitContainers[i], volumes, true) {
			return false
		}
	}
	return true
}

// finish writes the final status, and completes the deletion of a Pod being deleted.
func (w *podWorker) finish(ctx context.Context) {
	w.mu.Lock()
	stopping, removed := w.stopping, w.removed
	deleting := w.pod.DeletionTimestamp != nil
	w.mu.Unlock()
	if stopping || removed {
		return
	}
	w.pushStatus(ctx)
	if !deleting {
		// Over: keep its logs until the Pod is deleted (a terminal Pod goes at once) or the
		// kubelet stops.
		<-w.term.Done()
		w.mu.Lock()
		stopping, removed = w.stopping, w.removed
		w.mu.Unlock()
		if stopping || removed {
			return
		}
	}
	pod := w.latest()
	err := w.k.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: ptr.To[int64](0),
		Preconditions:      &metav1.Preconditions{UID: &w.uid},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		klog.ErrorS(err, "completing pod deletion", "pod", klog.KObj(pod))
	}
}

// event records an Event on the Pod, about one of its containers when fieldPath is set.
func (w *podWorker) event(fieldPath, eventType, reason, format string, args ...any) {
	pod := w.latest()
	ref := &v1.ObjectReference{
		Kind: "Pod", APIVersion: "v1", Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID,
		ResourceVersion: pod.ResourceVersion, FieldPath: fieldPath,
	}
	w.rec.Eventf(ref, eventType, reason, format, args...)
}

// initStatus is the status of a Pod whose containers are being created.
func (w *podWorker) initStatus(pod *v1.Pod) {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := metav1.Now()
	w.status = v1.PodStatus{
		Phase:     v1.PodPending,
		HostIP:    "127.0.0.1",
		HostIPs:   []v1.HostIP{{IP: "127.0.0.1"}},
		PodIP:     "127.0.0.1",
		PodIPs:    []v1.PodIP{{IP: "127.0.0.1"}},
		StartTime: &now,
		QOSClass:  pod.Status.QOSClass,
	}
	waiting := func(c v1.Container, reason string) v1.ContainerStatus {
		return v1.ContainerStatus{
			Name: c.Name, Image: c.Image, Started: ptr.To(false),
			State: v1.ContainerState{Waiting: &v1.ContainerStateWaiting{Reason: reason}},
		}
	}
	initialized := v1.ConditionTrue
	for _, c := range pod.Spec.InitContainers {
		w.status.InitContainerStatuses = append(w.status.InitContainerStatuses, waiting(c, "PodInitializing"))
		initialized = v1.ConditionFalse
	}
	reason := "ContainerCreating"
	if len(pod.Spec.InitContainers) > 0 {
		reason = "PodInitializing"
	}
	for _, c := range pod.Spec.Containers {
		w.status.ContainerStatuses = append(w.status.ContainerStatuses, waiting(c, reason))
	}
	for _, c := range []struct {
		t v1.PodConditionType
		s v1.ConditionStatus
	}{{v1.PodReadyToStartContainers, v1.ConditionFalse}, {v1.PodInitialized, initialized},
		{v1.ContainersReady, v1.ConditionFalse}, {v1.PodReady, v1.ConditionFalse}} {
		w.status.Conditions = append(w.status.Conditions, v1.PodCondition{Type: c.t, Status: c.s, LastTransitionTime: now})
	}
}

// setContainer changes the status of one container and derives the Pod's phase and
// readiness conditions from all of them.
func (w *podWorker) setContainer(name string, init bool, change func(*v1.ContainerStatus)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	list := w.status.ContainerStatuses
	if init {
		list = w.status.InitContainerStatuses
	}
	for i := range list {
		if list[i].Name == name {
			change(&list[i])
		}
	}
	w.derive()
}

func (w *podWorker) setCondition(t v1.PodConditionType, s v1.ConditionStatus, reason string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.condition(t, s, reason)
}

func (w *podWorker) condition(t v1.PodConditionType, s v1.ConditionStatus, reason string) {
	for i := range w.status.Conditions {
		c := &w.status.Conditions[i]
		if c.Type == t && (c.Status != s || c.Reason != reason) {
			c.Status, c.Reason, c.LastTransitionTime = s, reason, metav1.Now()
		}
	}
}

// derive computes phase and readiness the way kubelet does (getPhase).
func (w *podWorker) derive() {
	pod := w.pod
	policy := pod.Spec.RestartPolicy
	for _, s := range w.status.InitContainerStatuses {
		if t := s.State.Terminated; t != nil && t.ExitCode != 0 && policy == v1.RestartPolicyNever {
			w.status.Phase = v1.PodFailed
			w.condition(v1.PodReady, v1.ConditionFalse, "PodFailed")
			w.condition(v1.ContainersReady, v1.ConditionFalse, "PodFailed")
			return
		}
	}
	running, waiting, succeeded, failed, ready := 0, 0, 0, 0, 0
	for _, s := range w.status.ContainerStatuses {
		switch {
		case s.State.Running != nil:
			running++
			if s.Ready {
				ready++
			}
		case s.State.Terminated != nil && s.State.Terminated.ExitCode == 0:
			succeeded++
		case s.State.Terminated != nil:
			failed++
		case s.LastTerminationState.Terminated != nil:
			running++ // waiting to restart: the Pod keeps running
		default:
			waiting++
		}
	}
	total := len(w.status.ContainerStatuses)
	switch {
	case waiting > 0:
		w.status.Phase = v1.PodPending
	case running > 0:
		w.status.Phase = v1.PodRunning
	case succeeded == total:
		w.status.Phase = v1.PodSucceeded
		if policy == v1.RestartPolicyAlways {
			w.status.Phase = v1.PodRunning
		}
	default:
		w.status.Phase = v1.PodFailed
		if policy != v1.RestartPolicyNever {
			w.status.Phase = v1.PodRunning
		}
	}
	reason := ""
	status := v1.ConditionFalse
	if ready == total && total > 0 {
		status = v1.ConditionTrue
	} else {
		reason = "ContainersNotReady"
		if w.status.Phase == v1.PodSucceeded || w.status.Phase == v1.PodFailed {
			reason = "Pod" + string(w.status.Phase)
		}
	}
	w.condition(v1.ContainersReady, status, reason)
	w.condition(v1.PodReady, status, reason)
}

// pushStatus writes the status, keeping the conditions this kubelet does not own.
func (w *podWorker) pushStatus(ctx context.Context) {
	w.mu.Lock()
	if w.stopping || w.removed {
		w.mu.Unlock()
		return
	}
	status := *w.status.DeepCopy()
	pod := w.pod
	w.mu.Unlock()
	owned := map[v1.PodConditionType]bool{}
	for _, c := range status.Conditions {
		owned[c.Type] = true
	}
	pods := w.k.client.CoreV1().Pods(pod.Namespace)
	err := retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		current, err := pods.Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if current.UID != w.uid {
			return nil
		}
		merged := status.DeepCopy()
		for _, c := range current.Status.Conditions {
			if !owned[c.Type] {
				merged.Conditions = append(merged.Conditions, c)
			}
		}
		merged.QOSClass = current.Status.QOSClass
		current.Status = *merged
		_, err = pods.UpdateStatus(ctx, current, metav1.UpdateOptions{})
		return err
	})
	if apierrors.IsNotFound(err) {
		w.gone()
	} else if err != nil {
		klog.ErrorS(err, "updating pod status", "pod", klog.KObj(pod))
	}
}

// sleep waits d; false when ctx ended first.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func backOff(attempt int) time.Duration {
	d := backOffInitial
	for i := 0; i < attempt && d < backOffMax; i++ {
		d *= 2
	}
	return min(d, backOffMax)
}

func containerID(uid types.UID, name string, restart int32) string {
	return fmt.Sprintf("pie-cluster://%s-%s-%d", uid, name, restart)
}
