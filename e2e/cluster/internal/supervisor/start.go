package supervisor

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/pie-rs/pie/e2e/cluster/internal/kubelet"
	"github.com/pie-rs/pie/e2e/cluster/internal/pki"
	"github.com/pie-rs/pie/e2e/cluster/internal/provisioner"
)

// The local cluster's StorageClasses.
const (
	// DefaultStorageClass is provisioned by the test provisioner (the default class).
	DefaultStorageClass = "pie-local"
	// MissingProvisionerClass names a provisioner that does not exist: its claims stay
	// Pending with ExternalProvisioning Events (topolvm/pie's own e2e case).
	MissingProvisionerClass = "pie-no-provisioner"
)

// controllers of kube-controller-manager that the local cluster runs: what pie depends on
// (CronJobs, Jobs, garbage collection, ephemeral volumes, claim binding, namespaces, service
// accounts and tokens, TTL after finished, node lifecycle and taint eviction), and what
// Deployments of pie itself need.
var controllers = []string{
	"cronjob-controller", "job-controller", "garbage-collector-controller",
	"ephemeral-volume-controller", "persistentvolume-binder-controller",
	"persistentvolumeclaim-protection-controller", "persistentvolume-protection-controller",
	"serviceaccount-controller", "serviceaccount-token-controller", "namespace-controller",
	"root-ca-certificate-publisher-controller", "ttl-after-finished-controller",
	"pod-garbage-collector-controller", "node-lifecycle-controller", "taint-eviction-controller",
	"clusterrole-aggregation-controller", "deployment-controller", "replicaset-controller",
	"disruption-controller",
}

// auditPolicy logs every request of identities other than the cluster's own components at
// Metadata level (user, verb, resource, response code): tests count pie-controller's requests
// and its denials from it.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  users: [system:kube-controller-manager, system:kube-scheduler, system:apiserver, pie-cluster:kubelet, pie-cluster:provisioner, kube-apiserver-kubelet-client]
- level: None
  userGroups: [system:serviceaccounts:kube-system, system:nodes]
- level: None
  nonResourceURLs: ["/healthz*", "/readyz*", "/livez*", "/version"]
- level: Metadata
`

// enabledControllers is controllers without the disabled ones.
func enabledControllers(disabled []string) []string {
	var out []string
	for _, c := range controllers {
		if !slices.Contains(disabled, c) {
			out = append(out, c)
		}
	}
	return out
}

// checkDisabledControllers refuses a name that is not one of controllers.
func checkDisabledControllers(disabled []string) error {
	for _, c := range disabled {
		if !slices.Contains(controllers, c) {
			return fmt.Errorf("--disable-controller %q: not one the cluster runs (%s)", c, strings.Join(controllers, ", "))
		}
	}
	return nil
}

func (s *supervisor) allocatePorts() error {
	var err error
	pick := func() int {
		if err != nil {
			return 0
		}
		var p int
		p, err = freePort()
		return p
	}
	s.ports.etcdClient, s.ports.etcdPeer = pick(), pick()
	s.ports.apiserver = s.opts.APIServerPort
	if s.ports.apiserver == 0 {
		s.ports.apiserver = pick()
	}
	s.ports.controllerManager, s.ports.scheduler, s.ports.provisioner = pick(), pick(), pick()
	return err
}

// start brings the cluster up and returns what `up` prints.
func (s *supervisor) start(ctx context.Context) (string, error) {
	begin := time.Now()
	if err := s.allocatePorts(); err != nil {
		return "", err
	}
	files, err := pki.Generate(s.st.path("pki"), identities)
	if err != nil {
		return "", fmt.Errorf("certificates: %w", err)
	}
	s.files = files
	server := fmt.Sprintf("https://127.0.0.1:%d", s.ports.apiserver)
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", s.ports.etcdClient)
	// What the commands run against a running cluster (compact, token) need to know.
	if err := s.st.writeInfo(clusterInfo{
		APIServer: server, Etcd: etcdURL, ServiceAccountIssuer: server, ServiceAccountKey: files.SAKey,
	}); err != nil {
		return "", err
	}
	kubeconfig := func(name string) string { return s.st.path("kubeconfigs", name+".kubeconfig") }
	if err := files.WriteKubeconfig(s.st.path("kubeconfig"), server, "admin"); err != nil {
		return "", err
	}
	for _, id := range identities[1:] {
		if err := files.WriteKubeconfig(kubeconfig(id.Name), server, id.Name); err != nil {
			return "", err
		}
	}
	policy := s.st.path("audit-policy.yaml")
	if err := os.WriteFile(policy, []byte(auditPolicy), 0o644); err != nil {
		return "", err
	}

	config, err := clientcmd.BuildConfigFromFlags("", s.st.path("kubeconfig"))
	if err != nil {
		return "", err
	}
	// Waiting for thousands of nodes takes a few LISTs, but the default 5/s would still slow
	// down the storage classes and namespace checks of a large cluster.
	config.QPS, config.Burst = 50, 100
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return "", err
	}
	s.client = client

	if err := s.spawn("etcd", "--data-dir", s.st.path("etcd"), "--listen-client-url", etcdURL,
		"--listen-peer-url", fmt.Sprintf("http://127.0.0.1:%d", s.ports.etcdPeer)); err != nil {
		return "", err
	}
	if err := s.waitHealthy(ctx, "etcd"); err != nil {
		return "", err
	}

	if err := s.spawn("kube-apiserver",
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(s.ports.apiserver),
		"--tls-cert-file="+files.ServingCert, "--tls-private-key-file="+files.ServingKey,
		"--client-ca-file="+files.CACert,
		"--service-account-issuer="+server,
		"--service-account-key-file="+files.SAPublic,
		"--service-account-signing-key-file="+files.SAKey,
		"--authorization-mode=Node,RBAC",
		"--service-cluster-ip-range=10.0.0.0/24",
		"--endpoint-reconciler-type=none",
		"--allow-privileged=true",
		"--kubelet-client-certificate="+files.Cert("apiserver-kubelet-client"),
		"--kubelet-client-key="+files.Key("apiserver-kubelet-client"),
		"--kubelet-certificate-authority="+files.CACert,
		"--kubelet-preferred-address-types=InternalIP",
		"--audit-policy-file="+policy,
		"--audit-log-path="+s.st.path("logs", "audit.log"),
		"--audit-log-format=json", "--audit-log-maxbackup=1", "--audit-log-maxsize=512",
		"--cert-dir="+s.st.path("pki"),
		"--profiling=false",
		// On SIGTERM (stop-component, down) end the open watches at once, as a graceful
		// shutdown: without this the HTTP server waits for them until --request-timeout (60 s)
		// and the apiserver takes that long to exit. Clients see their watches end and
		// reconnect.
		"--shutdown-watch-termination-grace-period=5s",
	); err != nil {
		return "", err
	}
	if err := s.waitHealthy(ctx, "kube-apiserver"); err != nil {
		return "", err
	}
	if err := createStorageClasses(ctx, client); err != nil {
		return "", err
	}

	// The controller manager and the scheduler serve /healthz (what start-component waits for)
	// on 127.0.0.1 with a certificate of the cluster CA; their delegated authentication and
	// authorization use their own identities, as kubeadm sets them up.
	serving := func(name string, port int) ([]string, error) {
		cert, key, err := files.ServingCertFor(name + "-serving")
		if err != nil {
			return nil, err
		}
		return []string{
			"--bind-address=127.0.0.1", "--secure-port=" + strconv.Itoa(port),
			"--tls-cert-file=" + cert, "--tls-private-key-file=" + key,
			"--authentication-kubeconfig=" + kubeconfig(name), "--authorization-kubeconfig=" + kubeconfig(name),
		}, nil
	}
	kcmServing, err := serving("kube-controller-manager", s.ports.controllerManager)
	if err != nil {
		return "", err
	}
	if err := s.spawn("kube-controller-manager", append(kcmServing,
		"--kubeconfig="+kubeconfig("kube-controller-manager"),
		"--leader-elect=false",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file="+files.SAKey,
		"--root-ca-file="+files.CACert,
		"--cluster-signing-cert-file="+files.CACert, "--cluster-signing-key-file="+files.CAKey,
		"--controllers="+strings.Join(enabledControllers(s.opts.DisabledControllers), ","),
		// A node whose heartbeats stop is Unknown after 20 s rather than 50 s (after two
		// heartbeats when they are slower than kubelet's 10 s).
		"--node-monitor-grace-period="+max(20*time.Second, 2*s.opts.Heartbeat).String(), "--node-monitor-period=2s",
	)...); err != nil {
		return "", err
	}
	schedulerServing, err := serving("kube-scheduler", s.ports.scheduler)
	if err != nil {
		return "", err
	}
	if err := s.spawn("kube-scheduler", append(schedulerServing,
		"--kubeconfig="+kubeconfig("kube-scheduler"), "--leader-elect=false")...); err != nil {
		return "", err
	}
	if err := s.spawn("provisioner", "--kubeconfig="+kubeconfig("provisioner"), "--root="+s.st.path("volumes"),
		"--health-port="+strconv.Itoa(s.ports.provisioner)); err != nil {
		return "", err
	}
	kubeletConfig, nodes, err := s.kubeletConfig(kubeconfig("kubelet"))
	if err != nil {
		return "", err
	}
	s.nodes = nodes
	if err := s.spawn("kubelet", "--config="+kubeletConfig); err != nil {
		return "", err
	}
	for _, name := range []string{"kubelet", "kube-controller-manager", "kube-scheduler", "provisioner"} {
		if err := s.waitHealthy(ctx, name); err != nil {
			return "", err
		}
	}
	if err := s.waitFor(ctx, "the default ServiceAccount (serviceaccount controller)", func(ctx context.Context) (bool, string) {
		_, err := client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err == nil, ""
	}); err != nil {
		return "", err
	}

	var b strings.Builder
	fmt.Fprintf(&b, "local cluster ready in %.1f s: %d nodes (%s), Kubernetes %s at %s\n",
		time.Since(begin).Seconds(), len(nodes), nodeList(nodes), version(ctx, client), server)
	fmt.Fprintf(&b, "StorageClasses: %s (default, provisioner %s), %s (no provisioner)\n",
		DefaultStorageClass, provisioner.Name, MissingProvisionerClass)
	fmt.Fprintf(&b, "kubeconfig: %s\n", s.st.path("kubeconfig"))
	fmt.Fprintf(&b, "logs: %s\n", s.st.path("logs"))
	fmt.Fprintf(&b, "try: KUBECONFIG=%s %s get nodes\n", s.st.path("kubeconfig"), filepath.Join(filepath.Dir(s.opts.Self), "kubectl"))
	return b.String(), nil
}

// nodeList names the nodes, the first and last few of a large cluster.
func nodeList(nodes []string) string {
	if len(nodes) <= 10 {
		return strings.Join(nodes, ", ")
	}
	return strings.Join(nodes[:3], ", ") + ", ..., " + strings.Join(nodes[len(nodes)-2:], ", ")
}

func version(ctx context.Context, client kubernetes.Interface) string {
	v, err := client.Discovery().ServerVersion()
	if err != nil {
		return "(unknown version)"
	}
	_ = ctx
	return v.GitVersion
}

func (s *supervisor) kubeletConfig(kubeconfig string) (string, []string, error) {
	images := kubelet.ImageMap{}
	for _, name := range kubelet.ShellImageNames {
		images[name] = kubelet.ShellImage()
	}
	for _, flag := range s.opts.Images {
		ref, img, err := kubelet.ParseImageFlag(flag)
		if err != nil {
			return "", nil, err
		}
		images[ref] = img
	}
	cert, key, err := s.files.ServingCertFor("kubelet-serving")
	if err != nil {
		return "", nil, err
	}
	cfg := kubelet.Config{
		Kubeconfig:    kubeconfig,
		Dir:           s.st.path("pods"),
		PidDir:        s.st.path("pids"),
		Images:        images,
		APIServerPort: s.ports.apiserver,
		Self:          s.opts.Self,
		ServingCert:   cert,
		ServingKey:    key,
		ClientCA:      s.files.CACert,
		Heartbeat:     s.opts.Heartbeat,
	}
	var names []string
	for i := range s.opts.Nodes {
		name := fmt.Sprintf("%s%d", s.opts.NodePrefix, i+1)
		names = append(names, name)
		cfg.Nodes = append(cfg.Nodes, kubelet.NodeConfig{Name: name})
	}
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return "", nil, err
	}
	path := s.st.path("kubelet.json")
	return path, names, os.WriteFile(path, data, 0o644)
}

// readyNodes counts the nodes that are Ready and free of the not-ready taint (which the node
// lifecycle controller removes: then the scheduler places Pods there).
func readyNodes(ctx context.Context, client kubernetes.Interface, names []string) int {
	list, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return 0
	}
	wanted := map[string]bool{}
	for _, name := range names {
		wanted[name] = true
	}
	ready := 0
	for i := range list.Items {
		n := &list.Items[i]
		if !wanted[n.Name] {
			continue
		}
		ok := false
		for _, c := range n.Status.Conditions {
			if c.Type == v1.NodeReady && c.Status == v1.ConditionTrue {
				ok = true
			}
		}
		for _, t := range n.Spec.Taints {
			if t.Key == v1.TaintNodeNotReady || t.Key == v1.TaintNodeUnreachable {
				ok = false
			}
		}
		if ok {
			ready++
		}
	}
	return ready
}

func createStorageClasses(ctx context.Context, client kubernetes.Interface) error {
	wait := storagev1.VolumeBindingWaitForFirstConsumer
	remove := v1.PersistentVolumeReclaimDelete
	classes := []*storagev1.StorageClass{
		{
			ObjectMeta: metav1.ObjectMeta{Name: DefaultStorageClass, Annotations: map[string]string{
				"storageclass.kubernetes.io/is-default-class": "true",
			}},
			Provisioner: provisioner.Name, VolumeBindingMode: &wait, ReclaimPolicy: &remove,
			AllowVolumeExpansion: ptr.To(false),
		},
		{
			ObjectMeta:  metav1.ObjectMeta{Name: MissingProvisionerClass},
			Provisioner: "does-not-exist.pie.test", VolumeBindingMode: &wait, ReclaimPolicy: &remove,
		},
	}
	for _, sc := range classes {
		if _, err := client.StorageV1().StorageClasses().Create(ctx, sc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("StorageClass %s: %w", sc.Name, err)
		}
	}
	return nil
}
