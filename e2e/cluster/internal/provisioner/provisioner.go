// Package provisioner is the local cluster's dynamic provisioner: an external provisioner
// built on sig-storage-lib-external-provisioner (the library CSI's external-provisioner grew
// from), so claims get the same Events as in a cluster (Provisioning, ProvisioningSucceeded,
// ProvisioningFailed). Each volume is a directory on the host, a `local` PersistentVolume
// pinned to the node the scheduler selected (WaitForFirstConsumer). Faults come from the
// StorageClass's annotations (package faults).
package provisioner

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"

	"github.com/pie-rs/pie/e2e/cluster/internal/faults"
)

// Name is the provisioner of the local cluster's StorageClasses.
const Name = "hostpath.pie.test"

// Provisioner creates and deletes host directories for claims.
type Provisioner struct {
	client kubernetes.Interface
	// Root directory: volumes are <root>/<node>/<pv name>.
	root string
}

var _ controller.Provisioner = (*Provisioner)(nil)

// Main runs the provisioner until SIGTERM.
func Main(args []string) int {
	fs := flag.NewFlagSet("provisioner", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig of the provisioner's identity")
	root := fs.String("root", "", "directory that holds the volumes")
	healthPort := fs.Int("health-port", 0, "serve /healthz on this port of 127.0.0.1 (0: not at all)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *kubeconfig == "" || *root == "" {
		fmt.Fprintln(os.Stderr, "provisioner: --kubeconfig and --root are required")
		return 2
	}
	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fmt.Fprintf(os.Stderr, "provisioner: %v\n", err)
		return 1
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		fmt.Fprintf(os.Stderr, "provisioner: %v\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	p := &Provisioner{client: client, root: *root}
	pc := controller.NewProvisionController(ctx, client, Name, p,
		controller.LeaderElection(false),
		// Retry failed provisioning quickly: tests wait for the next ProvisioningFailed.
		controller.ExponentialBackOffOnError(false),
		controller.FailedProvisionThreshold(0),
		controller.FailedDeleteThreshold(0),
		controller.MetricsPort(0),
	)
	if *healthPort != 0 {
		if err := serveHealth(ctx, *healthPort, pc.HasRun); err != nil {
			fmt.Fprintf(os.Stderr, "provisioner: %v\n", err)
			return 1
		}
	}
	klog.InfoS("provisioner started", "name", Name, "root", *root)
	pc.Run(ctx)
	return 0
}

// serveHealth answers GET /healthz on 127.0.0.1:port: 200 once the provision controller runs
// (what `pie-cluster start-component provisioner` waits for), 503 before.
func serveHealth(ctx context.Context, port int, running func() bool) error {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if !running() {
			http.Error(w, "the provision controller is not running yet", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
	server := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = server.Serve(ln) }()
	go func() { <-ctx.Done(); _ = server.Close() }()
	return nil
}

// Provision creates <root>/<node>/<pv> and a `local` PV pinned to that node.
func (p *Provisioner) Provision(ctx context.Context, o controller.ProvisionOptions) (*v1.PersistentVolume, controller.ProvisioningState, error) {
	if o.SelectedNodeName == "" {
		return nil, controller.ProvisioningFinished, errors.New("no node selected: StorageClasses of " + Name + " must use volumeBindingMode WaitForFirstConsumer")
	}
	if err := p.provisionFault(ctx, o.StorageClass.Name); err != nil {
		return nil, controller.ProvisioningFinished, err
	}
	dir := filepath.Join(p.root, o.SelectedNodeName, o.PVName)
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return nil, controller.ProvisioningFinished, err
	}
	// Writable for any runAsUser, as hostPath-style provisioners make them; the kubelet still
	// applies the Pod's fsGroup.
	if err := os.Chmod(dir, 0o777); err != nil {
		return nil, controller.ProvisioningFinished, err
	}
	reclaim := v1.PersistentVolumeReclaimDelete
	if o.StorageClass.ReclaimPolicy != nil {
		reclaim = *o.StorageClass.ReclaimPolicy
	}
	mode := v1.PersistentVolumeFilesystem
	pv := &v1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: o.PVName},
		Spec: v1.PersistentVolumeSpec{
			PersistentVolumeReclaimPolicy: reclaim,
			AccessModes:                   o.PVC.Spec.AccessModes,
			Capacity:                      v1.ResourceList{v1.ResourceStorage: o.PVC.Spec.Resources.Requests[v1.ResourceStorage]},
			StorageClassName:              o.StorageClass.Name,
			VolumeMode:                    &mode,
			MountOptions:                  o.StorageClass.MountOptions,
			PersistentVolumeSource: v1.PersistentVolumeSource{
				Local: &v1.LocalVolumeSource{Path: dir},
			},
			NodeAffinity: &v1.VolumeNodeAffinity{Required: &v1.NodeSelector{
				NodeSelectorTerms: []v1.NodeSelectorTerm{{MatchExpressions: []v1.NodeSelectorRequirement{{
					Key: v1.LabelHostname, Operator: v1.NodeSelectorOpIn, Values: []string{o.SelectedNodeName},
				}}}},
			}},
		},
	}
	return pv, controller.ProvisioningFinished, nil
}

// Delete removes the volume's directory.
func (p *Provisioner) Delete(ctx context.Context, pv *v1.PersistentVolume) error {
	if err := p.deleteFault(ctx, pv.Spec.StorageClassName); err != nil {
		return err
	}
	if pv.Spec.Local == nil {
		return &controller.IgnoredError{Reason: "not a volume of " + Name}
	}
	return os.RemoveAll(pv.Spec.Local.Path)
}

// annotation reads a fault annotation of a StorageClass ("" when it or the class is gone).
func (p *Provisioner) annotation(ctx context.Context, class, key string) string {
	if class == "" {
		return ""
	}
	sc, err := p.client.StorageV1().StorageClasses().Get(ctx, class, metav1.GetOptions{})
	if err != nil {
		return ""
	}
	return sc.Annotations[key]
}

func (p *Provisioner) provisionFault(ctx context.Context, class string) error {
	op, err := faults.ParseProvision(p.annotation(ctx, class, faults.Provision))
	if err != nil {
		return fmt.Errorf("fault annotation of StorageClass %s is invalid: %w", class, err)
	}
	switch op.Action {
	case faults.Fail:
		return fmt.Errorf("provisioning failed: fault injected by %s on StorageClass %s", faults.Provision, class)
	case faults.Delay:
		return sleep(ctx, op.Delay)
	case faults.Hang:
		// No answer until the fault is removed or changed (then it applies as it is then).
		for op.Action == faults.Hang {
			if err := sleep(ctx, time.Second); err != nil {
				return err
			}
			op, _ = faults.ParseProvision(p.annotation(ctx, class, faults.Provision))
		}
		return p.provisionFault(ctx, class)
	}
	return nil
}

func (p *Provisioner) deleteFault(ctx context.Context, class string) error {
	op, err := faults.ParseDelete(p.annotation(ctx, class, faults.Delete))
	if err != nil {
		return fmt.Errorf("fault annotation of StorageClass %s is invalid: %w", class, err)
	}
	switch op.Action {
	case faults.Stuck:
		return fmt.Errorf("deletion failed: fault injected by %s on StorageClass %s", faults.Delete, class)
	case faults.Delay:
		return sleep(ctx, op.Delay)
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
