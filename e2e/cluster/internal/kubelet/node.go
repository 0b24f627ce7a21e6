package kubelet

import (
	"context"
	"math/rand/v2"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"k8s.io/component-base/version"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	"github.com/pie-rs/pie/e2e/cluster/internal/faults"
)

// DefaultHeartbeat is kubelet's default Lease renewal interval (its Lease lasts 40 s).
const DefaultHeartbeat = 10 * time.Second

// renewInterval is how often a node renews its Lease: Config.Heartbeat, else kubelet's default.
func (k *Kubelet) renewInterval() time.Duration {
	if k.cfg.Heartbeat > 0 {
		return k.cfg.Heartbeat
	}
	return DefaultHeartbeat
}

// leaseDuration is the Lease's duration in seconds: kubelet's 40 s at its default interval,
// and four intervals at a longer one.
func (k *Kubelet) leaseDuration() int32 {
	return int32(max(40, 4*k.renewInterval()/time.Second))
}

// statusInterval is how often the Node's conditions are reported without a change: three
// Lease renewals (kubelet's 30 s at its default interval).
func (k *Kubelet) statusInterval() time.Duration { return 3 * k.renewInterval() }

type node struct {
	k     *Kubelet
	cfg   NodeConfig
	index int
}

func quantity(s, fallback string) resource.Quantity {
	if s == "" {
		s = fallback
	}
	return resource.MustParse(s)
}

// register creates the Node (or takes over an existing one of the same name) and its Lease.
func (n *node) register(ctx context.Context) error {
	labels := map[string]string{
		v1.LabelHostname:          n.cfg.Name,
		v1.LabelOSStable:          "linux",
		v1.LabelArchStable:        "amd64",
		"beta.kubernetes.io/os":   "linux",
		"beta.kubernetes.io/arch": "amd64",
	}
	for k, v := range n.cfg.Labels {
		labels[k] = v
	}
	obj := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.cfg.Name, Labels: labels},
		Spec:       v1.NodeSpec{Taints: n.cfg.Taints},
	}
	_, err := n.k.client.CoreV1().Nodes().Create(ctx, obj, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	if err := n.reportStatus(ctx); err != nil {
		return err
	}
	return n.renewLease(ctx)
}

func (n *node) status(now metav1.Time, notReady bool) v1.NodeStatus {
	pods := n.cfg.Pods
	if pods == 0 {
		pods = 110
	}
	capacity := v1.ResourceList{
		v1.ResourceCPU:              quantity(n.cfg.CPU, "8"),
		v1.ResourceMemory:           quantity(n.cfg.Memory, "16Gi"),
		v1.ResourceEphemeralStorage: quantity(n.cfg.Storage, "100Gi"),
		v1.ResourcePods:             *resource.NewQuantity(int64(pods), resource.DecimalSI),
	}
	ready := v1.NodeCondition{
		Type: v1.NodeReady, Status: v1.ConditionTrue, Reason: "KubeletReady",
		Message: "kubelet is posting ready status", LastHeartbeatTime: now,
	}
	if notReady {
		ready.Status, ready.Reason = v1.ConditionFalse, "KubeletNotReady"
		ready.Message = "container runtime status check may not have completed yet: fault injected by " + faults.Ready
	}
	pressure := func(t v1.NodeConditionType, reason, message string) v1.NodeCondition {
		return v1.NodeCondition{Type: t, Status: v1.ConditionFalse, Reason: reason, Message: message, LastHeartbeatTime: now}
	}
	return v1.NodeStatus{
		Capacity:    capacity,
		Allocatable: capacity,
		Conditions: []v1.NodeCondition{
			pressure(v1.NodeMemoryPressure, "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
			pressure(v1.NodeDiskPressure, "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
			pressure(v1.NodePIDPressure, "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
			ready,
		},
		Addresses: []v1.NodeAddress{
			{Type: v1.NodeInternalIP, Address: "127.0.0.1"},
			{Type: v1.NodeHostName, Address: n.cfg.Name},
		},
		DaemonEndpoints: v1.NodeDaemonEndpoints{KubeletEndpoint: v1.DaemonEndpoint{Port: int32(n.cfg.Port)}},
		NodeInfo: v1.NodeSystemInfo{
			MachineID: "pie-cluster-" + n.cfg.Name, SystemUUID: "pie-cluster-" + n.cfg.Name,
			BootID: "pie-cluster", KernelVersion: "process", OSImage: "pie-cluster process kubelet",
			ContainerRuntimeVersion: "pie-cluster://" + version.Get().GitVersion,
			KubeletVersion:          version.Get().GitVersion, OperatingSystem: "linux", Architecture: "amd64",
		},
	}
}

// reportStatus writes the Node's status, keeping each condition's lastTransitionTime while its
// status stays the same.
func (n *node) reportStatus(ctx context.Context) error {
	notReady, err := faults.ParseReady(n.k.nodeAnnotation(n.cfg.Name, faults.Ready))
	if err != nil {
		klog.ErrorS(err, "ignoring fault", "node", n.cfg.Name)
	}
	return retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		current, err := n.k.client.CoreV1().Nodes().Get(ctx, n.cfg.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		now := metav1.Now()
		status := n.status(now, notReady)
		for i, c := range status.Conditions {
			status.Conditions[i].LastTransitionTime = now
			for _, old := range current.Status.Conditions {
				if old.Type == c.Type && old.Status == c.Status && !old.LastTransitionTime.IsZero() {
					status.Conditions[i].LastTransitionTime = old.LastTransitionTime
				}
			}
		}
		current.Status = status
		_, err = n.k.client.CoreV1().Nodes().UpdateStatus(ctx, current, metav1.UpdateOptions{})
		return err
	})
}

func (n *node) renewLease(ctx context.Context) error {
	leases := n.k.client.CoordinationV1().Leases(v1.NamespaceNodeLease)
	now := metav1.NewMicroTime(time.Now())
	lease, err := leases.Get(ctx, n.cfg.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		owner, err := n.k.client.CoreV1().Nodes().Get(ctx, n.cfg.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		lease = &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{
				Name: n.cfg.Name, Namespace: v1.NamespaceNodeLease,
				OwnerReferences: []metav1.OwnerReference{{
					APIVersion: "v1", Kind: "Node", Name: owner.Name, UID: owner.UID,
				}},
			},
			Spec: coordinationv1.LeaseSpec{
				HolderIdentity: ptr.To(n.cfg.Name), LeaseDurationSeconds: ptr.To(n.k.leaseDuration()),
				RenewTime: &now,
			},
		}
		_, err = leases.Create(ctx, lease, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	lease.Spec.RenewTime = &now
	_, err = leases.Update(ctx, lease, metav1.UpdateOptions{})
	return err
}

// heartbeat renews the Lease and reports the status until ctx ends, except while the node's
// heartbeat fault is set. A change of the Ready fault is reported at once.
func (n *node) heartbeat(ctx context.Context) {
	// Nodes registered together renew at spread-out moments, as real nodes do, rather than
	// all in the same second.
	renew, status := n.k.renewInterval(), n.k.statusInterval()
	offset := time.Duration(rand.Int64N(int64(renew)))
	lastStatus := time.Now().Add(-offset)
	lastReady := ""
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	lastRenew := time.Now().Add(-offset)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		stopped, err := faults.ParseWord(faults.Heartbeat, n.k.nodeAnnotation(n.cfg.Name, faults.Heartbeat), "stop")
		if err != nil {
			klog.ErrorS(err, "ignoring fault", "node", n.cfg.Name)
		}
		if stopped {
			continue
		}
		ready := n.k.nodeAnnotation(n.cfg.Name, faults.Ready)
		if time.Since(lastRenew) >= renew {
			if err := n.renewLease(ctx); err != nil {
				klog.ErrorS(err, "renewing lease", "node", n.cfg.Name)
			} else {
				lastRenew = time.Now()
			}
		}
		if ready != lastReady || time.Since(lastStatus) >= status {
			if err := n.reportStatus(ctx); err != nil {
				klog.ErrorS(err, "reporting node status", "node", n.cfg.Name)
				continue
			}
			lastStatus, lastReady = time.Now(), ready
		}
	}
}
