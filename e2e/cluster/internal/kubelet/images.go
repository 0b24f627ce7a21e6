package kubelet

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
)

// Image is what a container image means to the process kubelet: a program of this machine
// and the image's configuration, as its Dockerfile would set them. The host's system
// directories are every image's base layer.
type Image struct {
	// Entrypoint and Cmd as in the image config.
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
	// User "UID[:GID]" (default 0).
	User string `json:"user,omitempty"`
	// Files of the image: container path -> host path.
	Files map[string]string `json:"files,omitempty"`
	// Env of the image ("NAME=value"); PATH defaults to the usual one.
	Env []string `json:"env,omitempty"`
}

// ImageMap maps a reference to an image: either "repository:tag" exactly, or "repository"
// for every tag and digest of it.
type ImageMap map[string]Image

// Lookup finds the image of a container's image reference.
func (m ImageMap) Lookup(ref string) (Image, bool) {
	if img, ok := m[ref]; ok {
		return img, true
	}
	if img, ok := m[repository(ref)]; ok {
		return img, true
	}
	// Docker Hub's short names.
	if img, ok := m["docker.io/library/"+ref]; ok {
		return img, true
	}
	img, ok := m["docker.io/library/"+repository(ref)]
	return img, ok
}

// repository strips a reference's tag and digest.
func repository(ref string) string {
	if i := strings.Index(ref, "@"); i >= 0 {
		ref = ref[:i]
	}
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		ref = ref[:i]
	}
	return ref
}

// imageFlagForm is the form of an --image flag, for error messages.
const imageFlagForm = "REFERENCE=BINARY[,user=UID:GID][,cmd=ARGS][,env=NAME=VALUE]...[,file=PATH:HOST_PATH]..."

// ParseImageFlag parses `REFERENCE=BINARY[,user=UID:GID][,cmd=ARG ARG...][,env=NAME=VALUE]...
// [,file=PATH:HOST_PATH]...`: the image runs BINARY, bound at /usr/local/bin/<its name>, as
// its entrypoint; env= adds to the image's environment, file= binds a host file at PATH in
// the image (how the scale bench puts a recorded fio at /usr/local/bin/fio, first in PATH).
func ParseImageFlag(v string) (string, Image, error) {
	ref, rest, ok := strings.Cut(v, "=")
	if !ok || ref == "" || rest == "" {
		return "", Image{}, fmt.Errorf("--image %q: expected %s", v, imageFlagForm)
	}
	parts := strings.Split(rest, ",")
	binary, err := filepath.Abs(parts[0])
	if err != nil {
		return "", Image{}, err
	}
	target := "/usr/local/bin/" + filepath.Base(binary)
	img := Image{Entrypoint: []string{target}, Files: map[string]string{target: binary}}
	for _, p := range parts[1:] {
		key, value, _ := strings.Cut(p, "=")
		switch key {
		case "user":
			if _, _, err := parseUser(value); err != nil {
				return "", Image{}, fmt.Errorf("--image %q: %w", v, err)
			}
			img.User = value
		case "cmd":
			img.Cmd = strings.Fields(value)
		case "env":
			if name, _, ok := strings.Cut(value, "="); !ok || name == "" {
				return "", Image{}, fmt.Errorf("--image %q: env=%q is not NAME=VALUE", v, value)
			}
			img.Env = append(img.Env, value)
		case "file":
			path, host, ok := strings.Cut(value, ":")
			if !ok || !filepath.IsAbs(path) || host == "" {
				return "", Image{}, fmt.Errorf("--image %q: file=%q is not /PATH:HOST_PATH", v, value)
			}
			if host, err = filepath.Abs(host); err != nil {
				return "", Image{}, err
			}
			img.Files[path] = host
		default:
			return "", Image{}, fmt.Errorf("--image %q: unknown option %q (user=, cmd=, env=, file=)", v, key)
		}
	}
	return ref, img, nil
}

// ShellImage is the stand-in for small shell images in plain test Jobs: the host's /bin/sh.
func ShellImage() Image { return Image{Cmd: []string{"/bin/sh"}} }

// ShellImageNames are the references ShellImage answers to.
var ShellImageNames = []string{"pie.test/shell", "docker.io/library/busybox", "docker.io/library/alpine"}

func parseUser(s string) (uid, gid uint32, err error) {
	if s == "" {
		return 0, 0, nil
	}
	u, g, hasGroup := strings.Cut(s, ":")
	uid64, err := strconv.ParseUint(u, 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("user %q is not UID[:GID]", s)
	}
	// As in Docker: USER with a UID only runs with group 0.
	var gid64 uint64
	if hasGroup {
		if gid64, err = strconv.ParseUint(g, 10, 32); err != nil {
			return 0, 0, fmt.Errorf("user %q is not UID[:GID]", s)
		}
	}
	return uint32(uid64), uint32(gid64), nil
}
