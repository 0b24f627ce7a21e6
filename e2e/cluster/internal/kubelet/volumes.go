package kubelet

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	"github.com/pie-rs/pie/e2e/cluster/internal/faults"
)

// mountSource is a volume ready to be bound into containers.
type mountSource struct {
	path     string
	readOnly bool
	// full: mount a file system with no space left instead (the io=full fault).
	full bool
}

// mountRetry is how often a failing volume set-up is tried again (and FailedMount repeated).
const mountRetry = 5 * time.Second

// mountVolumes sets up every volume of the Pod, retrying failures with FailedMount Events as
// kubelet does, until all are ready; false when the Pod ends first.
func (w *podWorker) mountVolumes(ctx context.Context) (map[string]mountSource, bool) {
	for {
		pod := w.latest()
		sources, err := w.setUpVolumes(ctx, pod)
		if err == nil {
			return sources, true
		}
		w.event("", v1.EventTypeWarning, "FailedMount", "%v", err)
		if !sleep(w.term, mountRetry) {
			return nil, false
		}
	}
}

func (w *podWorker) setUpVolumes(ctx context.Context, pod *v1.Pod) (map[string]mountSource, error) {
	sources := map[string]mountSource{}
	base := filepath.Join(w.k.podDir(pod.UID), "volumes")
	for _, vol := range pod.Spec.Volumes {
		dir := filepath.Join(base, vol.Name)
		src, err := w.setUpVolume(ctx, pod, vol, dir)
		if err != nil {
			return nil, err
		}
		sources[vol.Name] = src
	}
	return sources, nil
}

func (w *podWorker) setUpVolume(ctx context.Context, pod *v1.Pod, vol v1.Volume, dir string) (mountSource, error) {
	fsGroup := (*int64)(nil)
	if pod.Spec.SecurityContext != nil {
		fsGroup = pod.Spec.SecurityContext.FSGroup
	}
	switch {
	case vol.PersistentVolumeClaim != nil:
		return w.claimVolume(ctx, pod, vol.Name, vol.PersistentVolumeClaim.ClaimName, vol.PersistentVolumeClaim.ReadOnly, fsGroup)
	case vol.Ephemeral != nil:
		// The ephemeral-volume controller names the claim <pod>-<volume>.
		return w.claimVolume(ctx, pod, vol.Name, pod.Name+"-"+vol.Name, false, fsGroup)
	case vol.EmptyDir != nil:
		if err := os.MkdirAll(dir, 0o777); err != nil {
			return mountSource{}, err
		}
		if err := os.Chmod(dir, 0o777); err != nil {
			return mountSource{}, err
		}
		return mountSource{path: dir}, applyFSGroup(dir, fsGroup)
	case vol.HostPath != nil:
		path := vol.HostPath.Path
		if t := vol.HostPath.Type; t != nil && *t == v1.HostPathDirectoryOrCreate {
			if err := os.MkdirAll(path, 0o755); err != nil {
				return mountSource{}, err
			}
		}
		if _, err := os.Stat(path); err != nil {
			return mountSource{}, fmt.Errorf("MountVolume.SetUp failed for volume %q : hostPath type check failed: %s does not exist", vol.Name, path)
		}
		return mountSource{path: path}, nil
	case vol.ConfigMap != nil, vol.Secret != nil, vol.DownwardAPI != nil, vol.Projected != nil:
		files, mode, err := w.projectedFiles(ctx, pod, vol)
		if err != nil {
			return mountSource{}, fmt.Errorf("MountVolume.SetUp failed for volume %q : %v", vol.Name, err)
		}
		return mountSource{path: dir, readOnly: true}, writeFiles(dir, files, mode, fsGroup)
	}
	return mountSource{}, fmt.Errorf("MountVolume.SetUp failed for volume %q : this volume type is not supported by pie-cluster's process kubelet", vol.Name)
}

// claimVolume resolves a claim to its PersistentVolume's host directory, honouring the mount
// and I/O faults of the node, the StorageClass and the claim.
func (w *podWorker) claimVolume(ctx context.Context, pod *v1.Pod, volName, claimName string, readOnly bool, fsGroup *int64) (mountSource, error) {
	core := w.k.client.CoreV1()
	pvc, err := core.PersistentVolumeClaims(pod.Namespace).Get(ctx, claimName, metav1.GetOptions{})
	if err != nil {
		return mountSource{}, fmt.Errorf("Unable to attach or mount volumes: unmounted volumes=[%s]: error processing PVC %s/%s: %v", volName, pod.Namespace, claimName, err)
	}
	if pvc.Status.Phase != v1.ClaimBound || pvc.Spec.VolumeName == "" {
		return mountSource{}, fmt.Errorf("Unable to attach or mount volumes: unmounted volumes=[%s]: PVC %s/%s is not bound", volName, pod.Namespace, claimName)
	}
	pv, err := core.PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		return mountSource{}, fmt.Errorf("Unable to attach or mount volumes: unmounted volumes=[%s]: %v", volName, err)
	}
	var path string
	switch {
	case pv.Spec.Local != nil:
		path = pv.Spec.Local.Path
	case pv.Spec.HostPath != nil:
		path = pv.Spec.HostPath.Path
	default:
		return mountSource{}, fmt.Errorf("MountVolume.SetUp failed for volume %q : only local and hostPath volumes can be mounted by pie-cluster's process kubelet", pv.Name)
	}
	class := w.storageClassAnnotations(ctx, pv.Spec.StorageClassName)
	annotation := func(key string) (string, string) {
		if v := pvc.Annotations[key]; v != "" {
			return v, "PersistentVolumeClaim " + pvc.Namespace + "/" + pvc.Name
		}
		if v := class[key]; v != "" {
			return v, "StorageClass " + pv.Spec.StorageClassName
		}
		if v := w.k.nodeAnnotation(pod.Spec.NodeName, key); v != "" {
			return v, "Node " + pod.Spec.NodeName
		}
		return "", ""
	}
	value, where := annotation(faults.Mount)
	failing, err := faults.ParseWord(faults.Mount, value, "fail")
	if err != nil {
		klog.ErrorS(err, "ignoring fault", "on", where)
	}
	if failing {
		return mountSource{}, fmt.Errorf("MountVolume.SetUp failed for volume %q : mount failed: exit status 32: fault injected by %s on %s", pv.Name, faults.Mount, where)
	}
	value, where = annotation(faults.IO)
	io, err := faults.ParseIO(value)
	if err != nil {
		klog.ErrorS(err, "ignoring fault", "on", where)
	}
	if _, err := os.Stat(path); err != nil {
		return mountSource{}, fmt.Errorf("MountVolume.NewMounter initialization failed for volume %q : path %q does not exist", pv.Name, path)
	}
	if err := applyFSGroup(path, fsGroup); err != nil {
		return mountSource{}, fmt.Errorf("MountVolume.SetUp failed for volume %q : applying fsGroup: %v", pv.Name, err)
	}
	return mountSource{path: path, readOnly: readOnly || io == faults.IOReadOnly, full: io == faults.IOFull}, nil
}

func (w *podWorker) storageClassAnnotations(ctx context.Context, name string) map[string]string {
	if name == "" {
		return nil
	}
	sc, err := w.k.client.StorageV1().StorageClasses().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil
	}
	return sc.Annotations
}

// applyFSGroup gives the volume's files to the fsGroup, group-writable, with set-gid
// directories, as kubelet's SetVolumeOwnership does (skipped when the root already matches,
// fsGroupChangePolicy OnRootMismatch).
func applyFSGroup(dir string, fsGroup *int64) error {
	if fsGroup == nil {
		return nil
	}
	gid := int(*fsGroup)
	if info, err := os.Stat(dir); err == nil {
		if st, ok := statGID(info); ok && st == gid && info.Mode()&os.ModeSetgid != 0 {
			return nil
		}
	}
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type()&fs.ModeSymlink != 0 {
			return nil
		}
		if err := os.Lchown(path, -1, gid); err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		mode := info.Mode() | 0o060
		if d.IsDir() {
			mode |= os.ModeSetgid | 0o010
		}
		return os.Chmod(path, mode)
	})
}

// projectedFiles collects the files of a configMap, secret, downwardAPI or projected volume.
func (w *podWorker) projectedFiles(ctx context.Context, pod *v1.Pod, vol v1.Volume) (map[string][]byte, int32, error) {
	mode := int32(0o644)
	var sources []v1.VolumeProjection
	switch {
	case vol.ConfigMap != nil:
		sources = []v1.VolumeProjection{{ConfigMap: &v1.ConfigMapProjection{LocalObjectReference: vol.ConfigMap.LocalObjectReference, Items: vol.ConfigMap.Items, Optional: vol.ConfigMap.Optional}}}
		mode = ptr.Deref(vol.ConfigMap.DefaultMode, mode)
	case vol.Secret != nil:
		sources = []v1.VolumeProjection{{Secret: &v1.SecretProjection{LocalObjectReference: v1.LocalObjectReference{Name: vol.Secret.SecretName}, Items: vol.Secret.Items, Optional: vol.Secret.Optional}}}
		mode = ptr.Deref(vol.Secret.DefaultMode, mode)
	case vol.DownwardAPI != nil:
		sources = []v1.VolumeProjection{{DownwardAPI: &v1.DownwardAPIProjection{Items: vol.DownwardAPI.Items}}}
		mode = ptr.Deref(vol.DownwardAPI.DefaultMode, mode)
	default:
		sources = vol.Projected.Sources
		mode = ptr.Deref(vol.Projected.DefaultMode, mode)
	}
	files := map[string][]byte{}
	core := w.k.client.CoreV1()
	pick := func(data map[string][]byte, items []v1.KeyToPath, kind, name string, opt *bool) error {
		if len(items) == 0 {
			for k, v := range data {
				files[k] = v
			}
			return nil
		}
		for _, it := range items {
			v, ok := data[it.Key]
			if !ok {
				if optional(opt) {
					continue
				}
				return fmt.Errorf("configuration error: key %q of %s %q not found", it.Key, kind, name)
			}
			files[it.Path] = v
		}
		return nil
	}
	for _, s := range sources {
		switch {
		case s.ConfigMap != nil:
			cm, err := core.ConfigMaps(pod.Namespace).Get(ctx, s.ConfigMap.Name, metav1.GetOptions{})
			if err != nil {
				if optional(s.ConfigMap.Optional) {
					continue
				}
				return nil, 0, fmt.Errorf("configmap %q not found", s.ConfigMap.Name)
			}
			data := map[string][]byte{}
			for k, v := range cm.Data {
				data[k] = []byte(v)
			}
			for k, v := range cm.BinaryData {
				data[k] = v
			}
			if err := pick(data, s.ConfigMap.Items, "configmap", cm.Name, s.ConfigMap.Optional); err != nil {
				return nil, 0, err
			}
		case s.Secret != nil:
			secret, err := core.Secrets(pod.Namespace).Get(ctx, s.Secret.Name, metav1.GetOptions{})
			if err != nil {
				if optional(s.Secret.Optional) {
					continue
				}
				return nil, 0, fmt.Errorf("secret %q not found", s.Secret.Name)
			}
			if err := pick(secret.Data, s.Secret.Items, "secret", secret.Name, s.Secret.Optional); err != nil {
				return nil, 0, err
			}
		case s.DownwardAPI != nil:
			for _, it := range s.DownwardAPI.Items {
				if it.FieldRef == nil {
					return nil, 0, fmt.Errorf("downwardAPI item %q: only fieldRef is supported", it.Path)
				}
				v, err := fieldValue(pod, it.FieldRef.FieldPath)
				if err != nil {
					return nil, 0, err
				}
				files[it.Path] = []byte(v)
			}
		case s.ServiceAccountToken != nil:
			token, err := w.token(ctx, pod, s.ServiceAccountToken)
			if err != nil {
				return nil, 0, err
			}
			files[s.ServiceAccountToken.Path] = []byte(token)
		case s.ClusterTrustBundle != nil, s.PodCertificate != nil:
			return nil, 0, errors.New("clusterTrustBundle and podCertificate projections are not supported by pie-cluster's process kubelet")
		}
	}
	return files, mode, nil
}

// token asks the apiserver for the Pod's bound service-account token, as kubelet's token
// manager does (the apiserver adds the Pod's and Node's claims).
func (w *podWorker) token(ctx context.Context, pod *v1.Pod, p *v1.ServiceAccountTokenProjection) (string, error) {
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: p.ExpirationSeconds,
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}
	if p.Audience != "" {
		req.Spec.Audiences = []string{p.Audience}
	}
	tr, err := w.k.client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("failed to fetch token: %v", err)
	}
	return tr.Status.Token, nil
}

// writeFiles writes a projected volume's files (readable by the fsGroup when there is one).
func writeFiles(dir string, files map[string][]byte, mode int32, fsGroup *int64) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for name, data := range files {
		if filepath.IsAbs(name) || strings.Contains(name, "..") {
			return fmt.Errorf("projected path %q must be relative without '..'", name)
		}
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, data, os.FileMode(mode)); err != nil {
			return err
		}
		if err := os.Chmod(path, os.FileMode(mode)); err != nil {
			return err
		}
		if fsGroup != nil {
			if err := os.Chown(path, -1, int(*fsGroup)); err != nil {
				return err
			}
			if err := os.Chmod(path, os.FileMode(mode)|0o040); err != nil {
				return err
			}
		}
	}
	return nil
}
