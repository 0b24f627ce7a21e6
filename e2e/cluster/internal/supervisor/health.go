package supervisor

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Components are the processes of the cluster in start order, as `stop-component` and
// `start-component` name them.
var Components = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "provisioner", "kubelet"}

// KnownComponent says whether name is one of Components.
func KnownComponent(name string) bool {
	for _, c := range Components {
		if c == name {
			return true
		}
	}
	return false
}

// healthWhat names what waitHealthy waits for, for its messages.
func (s *supervisor) healthWhat(name string) string {
	switch name {
	case "kube-apiserver":
		return "kube-apiserver to be ready (/readyz)"
	case "kubelet":
		return fmt.Sprintf("%d Ready nodes with renewed Leases (kubelet)", len(s.nodes))
	}
	return name + " to be healthy"
}

// healthy says whether the run of a component that began at begin serves, and if not, what is
// missing:
//
//	etcd                     GET /health on its client URL
//	kube-apiserver           GET /readyz (as admin)
//	kube-controller-manager  GET https://127.0.0.1:PORT/healthz (the cluster CA)
//	kube-scheduler           the same
//	provisioner              GET http://127.0.0.1:PORT/healthz: its controller runs
//	kubelet                  every node Ready and untainted, its Lease renewed by this run
func (s *supervisor) healthy(ctx context.Context, name string, begin time.Time) (bool, string) {
	switch name {
	case "etcd":
		return get(ctx, http.DefaultClient, fmt.Sprintf("http://127.0.0.1:%d/health", s.ports.etcdClient))
	case "kube-apiserver":
		body, err := s.client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			if detail := strings.TrimSpace(string(body)); detail != "" {
				return false, detail
			}
			return false, err.Error()
		}
		return true, ""
	case "kube-controller-manager":
		return s.getTLS(ctx, s.ports.controllerManager)
	case "kube-scheduler":
		return s.getTLS(ctx, s.ports.scheduler)
	case "provisioner":
		return get(ctx, http.DefaultClient, fmt.Sprintf("http://127.0.0.1:%d/healthz", s.ports.provisioner))
	case "kubelet":
		ready := readyNodes(ctx, s.client, s.nodes)
		if ready < len(s.nodes) {
			return false, fmt.Sprintf("%d of %d Ready and untainted", ready, len(s.nodes))
		}
		leases, err := s.client.CoordinationV1().Leases("kube-node-lease").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		renewed := map[string]bool{}
		for _, lease := range leases.Items {
			renewed[lease.Name] = lease.Spec.RenewTime != nil && !lease.Spec.RenewTime.Time.Before(begin)
		}
		for _, node := range s.nodes {
			if !renewed[node] {
				return false, fmt.Sprintf("the Lease of %s is not renewed yet", node)
			}
		}
		return true, ""
	}
	return false, "unknown component " + name
}

// waitHealthy waits until the latest run of a component is healthy, during the cluster's start.
func (s *supervisor) waitHealthy(ctx context.Context, name string) error {
	c := s.latest(name)
	if c == nil {
		return fmt.Errorf("%s is not started", name)
	}
	return s.waitFor(ctx, s.healthWhat(name), func(ctx context.Context) (bool, string) {
		return s.healthy(ctx, name, c.begin)
	})
}

// latest is the latest run of a component, or nil.
func (s *supervisor) latest(name string) *component {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.latestLocked(name)
}

func (s *supervisor) latestLocked(name string) *component {
	for _, c := range s.running {
		if c.name == name {
			return c
		}
	}
	return nil
}

// getTLS checks /healthz of a component that serves with a certificate of the cluster CA.
func (s *supervisor) getTLS(ctx context.Context, port int) (bool, string) {
	ca, err := os.ReadFile(s.files.CACert)
	if err != nil {
		return false, err.Error()
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer client.CloseIdleConnections()
	return get(ctx, client, fmt.Sprintf("https://127.0.0.1:%d/healthz", port))
}

// get says whether url answers 200, and if not, what it said.
func get(ctx context.Context, client *http.Client, url string) (bool, string) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false, err.Error()
	}
	resp, err := client.Do(req)
	if err != nil {
		return false, err.Error()
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Sprintf("%s: %s", url, resp.Status)
	}
	return true, ""
}
