package kubelet

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Readiness probes name ports as often as they number them (deploy/ and the Helm chart say
// port: health): both reach the container's port.
func TestProbeResolvesNamedAndNumericPorts(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	_, portText, _ := net.SplitHostPort(strings.TrimPrefix(srv.URL, "http://"))
	port, err := strconv.Atoi(portText)
	if err != nil {
		t.Fatal(err)
	}
	c := &v1.Container{Ports: []v1.ContainerPort{{Name: "health", ContainerPort: int32(port)}}}
	httpProbe := func(p intstr.IntOrString, path string) *v1.Probe {
		return &v1.Probe{ProbeHandler: v1.ProbeHandler{HTTPGet: &v1.HTTPGetAction{Path: path, Port: p}}}
	}
	tcpProbe := func(p intstr.IntOrString) *v1.Probe {
		return &v1.Probe{ProbeHandler: v1.ProbeHandler{TCPSocket: &v1.TCPSocketAction{Port: p}}}
	}
	for name, p := range map[string]*v1.Probe{
		"http named":   httpProbe(intstr.FromString("health"), "/readyz"),
		"http numeric": httpProbe(intstr.FromInt32(int32(port)), "/readyz"),
		"tcp named":    tcpProbe(intstr.FromString("health")),
	} {
		if err := check(c, p, time.Second); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := check(c, httpProbe(intstr.FromString("health"), "/other"), time.Second); err == nil ||
		!strings.Contains(err.Error(), "statuscode: 503") {
		t.Errorf("a 503 on the named port: %v", err)
	}
	if err := check(c, httpProbe(intstr.FromString("metrics"), "/readyz"), time.Second); err == nil ||
		!strings.Contains(err.Error(), `port "metrics": the container has no port of that name`) {
		t.Errorf("an unknown port name: %v", err)
	}
}
