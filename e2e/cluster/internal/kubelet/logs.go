package kubelet

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

// serveLogs serves GET /containerLogs/<namespace>/<pod>/<container> on each node's port,
// over TLS for the apiserver's kubelet client certificate, so `kubectl logs` works.
func (k *Kubelet) serveLogs(ctx context.Context) error {
	caPEM, err := os.ReadFile(k.cfg.ClientCA)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("%s: no certificate", k.cfg.ClientCA)
	}
	cert, err := tls.LoadX509KeyPair(k.cfg.ServingCert, k.cfg.ServingKey)
	if err != nil {
		return err
	}
	tlsConfig := &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /containerLogs/{namespace}/{pod}/{container}", k.containerLogs)
	for i := range k.cfg.Nodes {
		n := &k.cfg.Nodes[i]
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(n.Port)))
		if err != nil {
			return fmt.Errorf("node %s log server: %w", n.Name, err)
		}
		// Port 0 takes a free one, bound here: ports picked ahead by someone else can be
		// taken meanwhile (by any outgoing connection), which hundreds of nodes made likely.
		n.Port = ln.Addr().(*net.TCPAddr).Port
		srv := &http.Server{Handler: mux, TLSConfig: tlsConfig, ReadHeaderTimeout: 10 * time.Second}
		name := n.Name
		go func() {
			if err := srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
				klog.ErrorS(err, "log server", "node", name)
			}
		}()
		go func() { <-ctx.Done(); _ = srv.Close() }()
	}
	return nil
}

func (k *Kubelet) containerLogs(rw http.ResponseWriter, r *http.Request) {
	ns, name, ctr := r.PathValue("namespace"), r.PathValue("pod"), r.PathValue("container")
	k.mu.Lock()
	var dir string
	for uid, w := range k.workers {
		if p := w.latest(); p.Namespace == ns && p.Name == name {
			dir = filepath.Join(k.podDir(uid), "containers")
		}
	}
	k.mu.Unlock()
	if dir == "" {
		http.Error(rw, fmt.Sprintf("pod %s/%s is not on this node", ns, name), http.StatusNotFound)
		return
	}
	runs, _ := filepath.Glob(filepath.Join(dir, ctr+"-*"))
	sort.Slice(runs, func(i, j int) bool { return restartOf(runs[i]) < restartOf(runs[j]) })
	pick := len(runs) - 1
	if r.URL.Query().Get("previous") == "true" {
		pick--
	}
	if pick < 0 {
		http.Error(rw, fmt.Sprintf("container %q in pod %q has no logs yet", ctr, name), http.StatusBadRequest)
		return
	}
	data, err := os.ReadFile(filepath.Join(runs[pick], "log"))
	if err != nil {
		http.Error(rw, err.Error(), http.StatusInternalServerError)
		return
	}
	offset := int64(len(data))
	if tail, err := strconv.Atoi(r.URL.Query().Get("tailLines")); err == nil && tail >= 0 {
		lines := strings.SplitAfter(string(data), "\n")
		if len(lines) > 0 && lines[len(lines)-1] == "" {
			lines = lines[:len(lines)-1]
		}
		data = []byte(strings.Join(lines[max(0, len(lines)-tail):], ""))
	}
	rw.Header().Set("Content-Type", "text/plain")
	_, _ = rw.Write(data)
	if r.URL.Query().Get("follow") != "true" {
		return
	}
	// Follow: stream what is appended until the client goes.
	f, err := os.Open(filepath.Join(runs[pick], "log"))
	if err != nil {
		return
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return
	}
	flusher, _ := rw.(http.Flusher)
	buf := make([]byte, 32*1024)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			if _, werr := rw.Write(buf[:n]); werr != nil {
				return
			}
			if flusher != nil {
				flusher.Flush()
			}
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return
		}
		if n == 0 {
			select {
			case <-r.Context().Done():
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
}

func restartOf(dir string) int {
	i := strings.LastIndex(dir, "-")
	n, _ := strconv.Atoi(dir[i+1:])
	return n
}

func statGID(info os.FileInfo) (int, bool) {
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return int(st.Gid), true
}
