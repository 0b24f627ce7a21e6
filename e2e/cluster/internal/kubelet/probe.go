package kubelet

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/klog/v2"
)

// probeReadiness runs a container's readinessProbe (httpGet or tcpSocket; every container
// shares the host's network, so ports are on 127.0.0.1; a named port is the container's port of
// that name) until the container exits or the Pod
// ends, and reports the container Ready accordingly. An exec probe is not run: the container
// counts as ready after the initial delay.
func (w *podWorker) probeReadiness(ctx context.Context, c *v1.Container, proc *process) {
	p := c.ReadinessProbe
	period := time.Duration(max(p.PeriodSeconds, 1)) * time.Second
	timeout := time.Duration(max(p.TimeoutSeconds, 1)) * time.Second
	success, failure := max(p.SuccessThreshold, 1), max(p.FailureThreshold, 1)
	select {
	case <-proc.exited:
		return
	case <-w.term.Done():
		return
	case <-time.After(time.Duration(p.InitialDelaySeconds) * time.Second):
	}
	ready := false
	var passes, fails int32
	for {
		err := check(c, p, timeout)
		if err != nil {
			passes, fails = 0, fails+1
		} else {
			passes, fails = passes+1, 0
		}
		changed := false
		switch {
		case !ready && passes >= success:
			ready, changed = true, true
		case ready && fails >= failure:
			ready, changed = false, true
			w.event(fieldPath(c, false), v1.EventTypeWarning, "Unhealthy", "Readiness probe failed: %v", err)
		}
		if changed {
			w.setContainer(c.Name, false, func(s *v1.ContainerStatus) {
				if s.State.Running != nil {
					s.Ready = ready
				}
			})
			w.pushStatus(ctx)
		}
		select {
		case <-proc.exited:
			return
		case <-w.term.Done():
			return
		case <-time.After(period):
		}
	}
}

// probePort is a probe's port as kubelet resolves it: a number, or the name of one of the
// container's ports.
func probePort(c *v1.Container, port intstr.IntOrString) (int, error) {
	if port.Type == intstr.Int {
		return port.IntValue(), nil
	}
	for _, p := range c.Ports {
		if p.Name == port.StrVal {
			return int(p.ContainerPort), nil
		}
	}
	return 0, fmt.Errorf("port %q: the container has no port of that name", port.StrVal)
}

func check(c *v1.Container, p *v1.Probe, timeout time.Duration) error {
	switch {
	case p.HTTPGet != nil:
		port, err := probePort(c, p.HTTPGet.Port)
		if err != nil {
			return err
		}
		scheme := "http"
		if p.HTTPGet.Scheme == v1.URISchemeHTTPS {
			scheme = "https"
		}
		url := fmt.Sprintf("%s://127.0.0.1:%d%s", scheme, port, p.HTTPGet.Path)
		client := http.Client{Timeout: timeout}
		resp, err := client.Get(url)
		if err != nil {
			return err
		}
		_ = resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("HTTP probe failed with statuscode: %d", resp.StatusCode)
		}
		return nil
	case p.TCPSocket != nil:
		port, err := probePort(c, p.TCPSocket.Port)
		if err != nil {
			return err
		}
		conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), timeout)
		if err != nil {
			return err
		}
		return conn.Close()
	}
	klog.V(2).Info("exec and grpc readiness probes are not run; the container counts as ready")
	return nil
}
