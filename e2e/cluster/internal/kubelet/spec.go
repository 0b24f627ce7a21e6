package kubelet

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/kubernetes/third_party/forked/golang/expansion"

	"github.com/pie-rs/pie/e2e/cluster/internal/container"
)

const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// containerSpec turns a container of a Pod into what container-init runs: the command as
// Kubernetes combines it with the image's, the environment kubelet builds, the user, and the
// volume mounts.
func (w *podWorker) containerSpec(ctx context.Context, pod *v1.Pod, c *v1.Container, img Image, volumes map[string]mountSource) (container.Spec, error) {
	env, err := w.environment(ctx, pod, c, img)
	if err != nil {
		return container.Spec{}, err
	}
	vars := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		vars[k] = v
	}
	mapping := expansion.MappingFuncFor(vars)
	expand := func(list []string) []string {
		out := make([]string, 0, len(list))
		for _, s := range list {
			out = append(out, expansion.Expand(s, mapping))
		}
		return out
	}
	// Kubernetes' rule: command replaces the entrypoint (and drops the image's cmd); args
	// replace the image's cmd.
	argv := append([]string{}, img.Entrypoint...)
	args := img.Cmd
	if len(c.Command) > 0 {
		argv, args = expand(c.Command), nil
	}
	if len(c.Args) > 0 {
		args = expand(c.Args)
	}
	argv = append(argv, args...)

	uid, gid, err := parseUser(img.User)
	if err != nil {
		return container.Spec{}, err
	}
	psc := pod.Spec.SecurityContext
	if psc == nil {
		psc = &v1.PodSecurityContext{}
	}
	csc := c.SecurityContext
	if csc == nil {
		csc = &v1.SecurityContext{}
	}
	if v := firstInt(csc.RunAsUser, psc.RunAsUser); v != nil {
		uid = uint32(*v)
	}
	if v := firstInt(csc.RunAsGroup, psc.RunAsGroup); v != nil {
		gid = uint32(*v)
	}
	nonRoot := csc.RunAsNonRoot
	if nonRoot == nil {
		nonRoot = psc.RunAsNonRoot
	}
	if nonRoot != nil && *nonRoot && uid == 0 {
		return container.Spec{}, fmt.Errorf("container has runAsNonRoot and image will run as root (pod: %q, container: %s)", pod.Namespace+"/"+pod.Name, c.Name)
	}
	var groups []uint32
	if psc.FSGroup != nil {
		groups = append(groups, uint32(*psc.FSGroup))
	}
	for _, g := range psc.SupplementalGroups {
		groups = append(groups, uint32(g))
	}

	spec := container.Spec{
		Hostname:        podHostname(pod),
		Files:           img.Files,
		ReadOnlyRoot:    csc.ReadOnlyRootFilesystem != nil && *csc.ReadOnlyRootFilesystem,
		NoNewPrivileges: csc.AllowPrivilegeEscalation != nil && !*csc.AllowPrivilegeEscalation,
		Argv:            argv,
		Env:             env,
		Dir:             c.WorkingDir,
		UID:             uid,
		GID:             gid,
		Groups:          groups,
	}
	for _, m := range c.VolumeMounts {
		src, ok := volumes[m.Name]
		if !ok {
			return container.Spec{}, fmt.Errorf("volume mount %q: no volume of that name", m.Name)
		}
		source := src.path
		subPath := m.SubPath
		if m.SubPathExpr != "" {
			subPath = expansion.Expand(m.SubPathExpr, mapping)
		}
		if subPath != "" {
			if filepath.IsAbs(subPath) || strings.Contains(subPath, "..") {
				return container.Spec{}, fmt.Errorf("volume mount %q: subPath %q must be a relative path without '..'", m.Name, subPath)
			}
			source = filepath.Join(source, subPath)
		}
		spec.Mounts = append(spec.Mounts, container.Mount{
			Source: source, Target: m.MountPath, ReadOnly: m.ReadOnly || src.readOnly, Full: src.full,
		})
	}
	return spec, nil
}

func firstInt(values ...*int64) *int64 {
	for _, v := range values {
		if v != nil {
			return v
		}
	}
	return nil
}

// environment is the container's environment as kubelet builds it: the image's, the
// apiserver's service variables, envFrom, then env with $(VAR) expansion and valueFrom.
func (w *podWorker) environment(ctx context.Context, pod *v1.Pod, c *v1.Container, img Image) ([]string, error) {
	order := []string{}
	vars := map[string]string{}
	set := func(k, v string) {
		if _, ok := vars[k]; !ok {
			order = append(order, k)
		}
		vars[k] = v
	}
	set("PATH", defaultPath)
	for _, kv := range img.Env {
		k, v, _ := strings.Cut(kv, "=")
		set(k, v)
	}
	set("HOSTNAME", pod.Name)
	port := strconv.Itoa(w.k.cfg.APIServerPort)
	set("KUBERNETES_SERVICE_HOST", "127.0.0.1")
	set("KUBERNETES_SERVICE_PORT", port)
	set("KUBERNETES_SERVICE_PORT_HTTPS", port)
	set("KUBERNETES_PORT", "tcp://127.0.0.1:"+port)
	core := w.k.client.CoreV1()
	for _, from := range c.EnvFrom {
		var data map[string]string
		switch {
		case from.ConfigMapRef != nil:
			cm, err := core.ConfigMaps(pod.Namespace).Get(ctx, from.ConfigMapRef.Name, metav1.GetOptions{})
			if err != nil {
				if optional(from.ConfigMapRef.Optional) {
					continue
				}
				return nil, fmt.Errorf("configmap %q not found", from.ConfigMapRef.Name)
			}
			data = cm.Data
		case from.SecretRef != nil:
			s, err := core.Secrets(pod.Namespace).Get(ctx, from.SecretRef.Name, metav1.GetOptions{})
			if err != nil {
				if optional(from.SecretRef.Optional) {
					continue
				}
				return nil, fmt.Errorf("secret %q not found", from.SecretRef.Name)
			}
			data = map[string]string{}
			for k, v := range s.Data {
				data[k] = string(v)
			}
		}
		keys := make([]string, 0, len(data))
		for k := range data {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			set(from.Prefix+k, data[k])
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			set(e.Name, expansion.Expand(e.Value, expansion.MappingFuncFor(vars)))
			continue
		}
		v, skip, err := w.valueFrom(ctx, pod, c, e.ValueFrom)
		if err != nil {
			return nil, err
		}
		if !skip {
			set(e.Name, v)
		}
	}
	env := make([]string, 0, len(order))
	for _, k := range order {
		env = append(env, k+"="+vars[k])
	}
	return env, nil
}

func optional(b *bool) bool { return b != nil && *b }

func (w *podWorker) valueFrom(ctx context.Context, pod *v1.Pod, c *v1.Container, from *v1.EnvVarSource) (value string, skip bool, err error) {
	core := w.k.client.CoreV1()
	switch {
	case from.FieldRef != nil:
		v, err := fieldValue(pod, from.FieldRef.FieldPath)
		return v, false, err
	case from.ConfigMapKeyRef != nil:
		ref := from.ConfigMapKeyRef
		cm, err := core.ConfigMaps(pod.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		if err != nil {
			if optional(ref.Optional) {
				return "", true, nil
			}
			return "", false, fmt.Errorf("configmap %q not found", ref.Name)
		}
		v, ok := cm.Data[ref.Key]
		if !ok && !optional(ref.Optional) {
			return "", false, fmt.Errorf("couldn't find key %s in ConfigMap %s/%s", ref.Key, pod.Namespace, ref.Name)
		}
		return v, !ok, nil
	case from.SecretKeyRef != nil:
		ref := from.SecretKeyRef
		s, err := core.Secrets(pod.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		if err != nil {
			if optional(ref.Optional) {
				return "", true, nil
			}
			return "", false, fmt.Errorf("secret %q not found", ref.Name)
		}
		v, ok := s.Data[ref.Key]
		if !ok && !optional(ref.Optional) {
			return "", false, fmt.Errorf("couldn't find key %s in Secret %s/%s", ref.Key, pod.Namespace, ref.Name)
		}
		return string(v), !ok, nil
	case from.ResourceFieldRef != nil:
		return resourceValue(c, from.ResourceFieldRef)
	}
	return "", false, fmt.Errorf("unsupported env valueFrom")
}

// fieldValue is a downward-API field of the Pod.
func fieldValue(pod *v1.Pod, path string) (string, error) {
	if key, ok := strings.CutPrefix(path, "metadata.labels['"); ok {
		return pod.Labels[strings.TrimSuffix(key, "']")], nil
	}
	if key, ok := strings.CutPrefix(path, "metadata.annotations['"); ok {
		return pod.Annotations[strings.TrimSuffix(key, "']")], nil
	}
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.hostIP", "status.podIP", "status.hostIPs", "status.podIPs":
		return "127.0.0.1", nil
	case "metadata.labels", "metadata.annotations":
		m := pod.Labels
		if path == "metadata.annotations" {
			m = pod.Annotations
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		lines := make([]string, 0, len(keys))
		for _, k := range keys {
			lines = append(lines, fmt.Sprintf("%s=%q", k, m[k]))
		}
		return strings.Join(lines, "\n"), nil
	}
	return "", fmt.Errorf("unsupported fieldRef %q", path)
}

// resourceValue is a container's limit or request, defaulting limits to the node's capacity.
func resourceValue(c *v1.Container, ref *v1.ResourceFieldSelector) (string, bool, error) {
	kind, name, ok := strings.Cut(ref.Resource, ".")
	if !ok {
		return "", false, fmt.Errorf("unsupported resourceFieldRef %q", ref.Resource)
	}
	list := c.Resources.Limits
	if kind == "requests" {
		list = c.Resources.Requests
	}
	q, ok := list[v1.ResourceName(name)]
	if !ok {
		defaults := map[string]string{"cpu": "8", "memory": "16Gi", "ephemeral-storage": "100Gi"}
		if kind == "requests" {
			defaults = map[string]string{"cpu": "0", "memory": "0", "ephemeral-storage": "0"}
		}
		return defaults[name], false, nil
	}
	divisor := ref.Divisor
	if divisor.IsZero() {
		if name == "cpu" {
			return strconv.FormatInt(q.MilliValue()/1000+boolInt(q.MilliValue()%1000 != 0), 10), false, nil
		}
		return strconv.FormatInt(q.Value(), 10), false, nil
	}
	if name == "cpu" {
		return strconv.FormatInt((q.MilliValue()+divisor.MilliValue()-1)/divisor.MilliValue(), 10), false, nil
	}
	return strconv.FormatInt((q.Value()+divisor.Value()-1)/divisor.Value(), 10), false, nil
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// podHostname is the hostname kubelet gives a Pod's containers: spec.hostname, else the Pod's
// name, cut to 63 characters (a DNS label).
func podHostname(pod *v1.Pod) string {
	name := pod.Spec.Hostname
	if name == "" {
		name = pod.Name
	}
	if len(name) > 63 {
		name = strings.TrimRight(name[:63], "-.")
	}
	return name
}
