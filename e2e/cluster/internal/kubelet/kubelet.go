// Package kubelet is the local cluster's process kubelet: it registers N Nodes (labels,
// capacity, Ready, Lease heartbeats) and plays kubelet for the Pods bound to them, running each
// container as a local process (package container) found through an image map. It sets Pod
// status and emits Events the way kubelet does, finishes Pod deletion within the grace period,
// serves container logs to the apiserver (`kubectl logs`), and breaks on demand (package
// faults). It holds no Kubernetes code of its own beyond client-go.
package kubelet

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
)

// Config is what the supervisor tells the kubelet.
type Config struct {
	Kubeconfig string
	// Nodes to register and serve, with the port of each one's log server (0: a free one).
	Nodes []NodeConfig
	// Dir holds per-Pod state (volumes, container roots and logs).
	Dir string
	// PidDir records each container's process group as container-<pgid> "PGID STARTTIME", so
	// `pie-cluster down` can stop what a crashed kubelet left.
	PidDir string
	// Images maps image references to local programs.
	Images ImageMap
	// APIServerPort is published to containers as KUBERNETES_SERVICE_PORT.
	APIServerPort int
	// Self is the pie-cluster binary (for container-init).
	Self string
	// ServingCert and ServingKey serve container logs; ClientCA checks the apiserver.
	ServingCert, ServingKey, ClientCA string
	// Heartbeat is the nodes' Lease renewal interval (0: kubelet's 10 s); their status is
	// reported every three. Thousands of nodes need a longer one on a small machine.
	Heartbeat time.Duration `json:"heartbeat,omitempty"`
}

// NodeConfig is one node this kubelet plays.
type NodeConfig struct {
	Name    string            `json:"name"`
	Port    int               `json:"port"`
	Labels  map[string]string `json:"labels,omitempty"`
	Taints  []v1.Taint        `json:"taints,omitempty"`
	Pods    int               `json:"pods,omitempty"`
	CPU     string            `json:"cpu,omitempty"`
	Memory  string            `json:"memory,omitempty"`
	Storage string            `json:"storage,omitempty"`
}

// Kubelet serves the Pods of its nodes.
type Kubelet struct {
	cfg       Config
	client    kubernetes.Interface
	nodes     map[string]*node
	nodeList  corelisters.NodeLister
	recorders map[string]record.EventRecorder

	mu      sync.Mutex
	workers map[types.UID]*podWorker
	wg      sync.WaitGroup
}

// Main is `pie-cluster kubelet --config FILE`.
func Main(args []string) int {
	fs := flag.NewFlagSet("kubelet", flag.ContinueOnError)
	configFile := fs.String("config", "", "the kubelet's configuration (JSON)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	data, err := os.ReadFile(*configFile)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kubelet: %v\n", err)
		return 2
	}
	var cfg Config
	if err := json.Unmarshal(data, &cfg); err != nil {
		fmt.Fprintf(os.Stderr, "kubelet: %s: %v\n", *configFile, err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := Run(ctx, cfg); err != nil {
		fmt.Fprintf(os.Stderr, "kubelet: %v\n", err)
		return 1
	}
	return 0
}

// Run serves until ctx ends, then stops every container (the Pods stay as they are).
func Run(ctx context.Context, cfg Config) error {
	restConfig, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		return err
	}
	// Enough for every node's heartbeat (a GET and a write per Lease renewal and per status
	// report) with room for the Pods' status and Events.
	heartbeat := cfg.Heartbeat
	if heartbeat <= 0 {
		heartbeat = DefaultHeartbeat
	}
	perSecond := float64(len(cfg.Nodes)) * 4 / heartbeat.Seconds()
	restConfig.QPS = float32(max(100, 2*perSecond))
	restConfig.Burst = int(2 * restConfig.QPS)
	client, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		return err
	}
	k := &Kubelet{
		cfg:       cfg,
		client:    client,
		nodes:     map[string]*node{},
		recorders: map[string]record.EventRecorder{},
		workers:   map[types.UID]*podWorker{},
	}
	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	for _, n := range cfg.Nodes {
		k.recorders[n.Name] = broadcaster.NewRecorder(scheme.Scheme, v1.EventSource{Component: "kubelet", Host: n.Name})
	}

	factory := informers.NewSharedInformerFactory(client, 10*time.Minute)
	nodeInformer := factory.Core().V1().Nodes()
	k.nodeList = nodeInformer.Lister()
	podInformer := factory.Core().V1().Pods().Informer()
	if _, err := podInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { k.podChanged(ctx, obj) },
		UpdateFunc: func(_, obj any) { k.podChanged(ctx, obj) },
		DeleteFunc: func(obj any) { k.podDeleted(obj) },
	}); err != nil {
		return err
	}
	nodeInformer.Informer() // registered before Start
	factory.Start(ctx.Done())

	// The log servers first: they pick each node's port, which its status publishes.
	if err := k.serveLogs(ctx); err != nil {
		return err
	}
	for i, n := range k.cfg.Nodes {
		nd := &node{k: k, cfg: n, index: i}
		k.nodes[n.Name] = nd
		if err := nd.register(ctx); err != nil {
			return fmt.Errorf("registering node %s: %w", n.Name, err)
		}
	}
	factory.WaitForCacheSync(ctx.Done())
	for _, nd := range k.nodes {
		go nd.heartbeat(ctx)
	}
	klog.InfoS("kubelet serving", "nodes", len(cfg.Nodes))
	<-ctx.Done()
	k.stopAll()
	factory.Shutdown()
	return nil
}

func (k *Kubelet) podChanged(ctx context.Context, obj any) {
	pod, ok := obj.(*v1.Pod)
	if !ok || k.nodes[pod.Spec.NodeName] == nil {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	w := k.workers[pod.UID]
	if w == nil {
		// A Pod that is already over when this kubelet first sees it was run by another.
		if pod.Status.Phase == v1.PodSucceeded || pod.Status.Phase == v1.PodFailed {
			return
		}
		w = newPodWorker(k, pod)
		k.workers[pod.UID] = w
		k.wg.Add(1)
		go func() {
			defer k.wg.Done()
			w.run(ctx)
			k.mu.Lock()
			delete(k.workers, pod.UID)
			k.mu.Unlock()
		}()
	}
	w.update(pod)
}

func (k *Kubelet) podDeleted(obj any) {
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
	}
	pod, ok := obj.(*v1.Pod)
	if !ok {
		return
	}
	k.mu.Lock()
	w := k.workers[pod.UID]
	k.mu.Unlock()
	if w != nil {
		w.gone()
	}
}

// stopAll kills every container and waits for the workers.
func (k *Kubelet) stopAll() {
	k.mu.Lock()
	for _, w := range k.workers {
		w.shutdown()
	}
	k.mu.Unlock()
	done := make(chan struct{})
	go func() { k.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		klog.Warning("containers still running after 15 s")
	}
}

// nodeAnnotation reads an annotation of a node from the informer cache.
func (k *Kubelet) nodeAnnotation(name, key string) string {
	n, err := k.nodeList.Get(name)
	if err != nil {
		return ""
	}
	return n.Annotations[key]
}

func (k *Kubelet) podDir(uid types.UID) string { return filepath.Join(k.cfg.Dir, string(uid)) }

func itoa(i int) string { return strconv.Itoa(i) }
