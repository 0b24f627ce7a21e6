// Package container starts one container process for the process kubelet: a local program
// in a mount namespace of its own, whose root file system is a tmpfs holding read-only binds
// of the host's system directories (the host is every image's base layer), the image's own
// files, and the Pod's volumes at their container paths. It then becomes the container's user
// and executes the container's command, so its PID, exit code and output are the container's.
//
// The kubelet runs `pie-cluster container-init --spec FILE` with CLONE_NEWNS and CLONE_NEWUTS and a status pipe
// as file descriptor 3: a setup error is written there; a successful exec closes it empty.
package container

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Spec is what the kubelet hands to container-init.
type Spec struct {
	// Hostname is set in the container's own UTS namespace.
	Hostname string `json:"hostname,omitempty"`
	// Root is an empty directory on the host that becomes the container's root.
	Root string `json:"root"`
	// Files of the image: container path -> host path, bound read-only.
	Files map[string]string `json:"files,omitempty"`
	// Mounts are the Pod's volumes, in the order of the container's volumeMounts.
	Mounts []Mount `json:"mounts,omitempty"`
	// ReadOnlyRoot is securityContext.readOnlyRootFilesystem.
	ReadOnlyRoot bool `json:"readOnlyRoot,omitempty"`
	// NoNewPrivileges is securityContext.allowPrivilegeEscalation=false.
	NoNewPrivileges bool     `json:"noNewPrivileges,omitempty"`
	Argv            []string `json:"argv"`
	Env             []string `json:"env"`
	Dir             string   `json:"dir,omitempty"`
	UID             uint32   `json:"uid"`
	GID             uint32   `json:"gid"`
	Groups          []uint32 `json:"groups,omitempty"`
}

// Mount is one volume mount.
type Mount struct {
	// Source on the host (a directory or a file); empty for Full.
	Source   string `json:"source,omitempty"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"readOnly,omitempty"`
	// Full mounts a tiny file system with no space left instead of Source (an I/O fault).
	Full bool `json:"full,omitempty"`
}

// hostDirs are bound read-only at the same paths; a symbolic link (merged /usr) is copied.
var hostDirs = []string{"/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/usr", "/etc", "/opt"}

const statusFD = 3

// Main is `pie-cluster container-init`. It returns only on failure.
func Main(args []string) int {
	syscall.CloseOnExec(statusFD)
	status := os.NewFile(statusFD, "status")
	fail := func(err error) int {
		if status != nil {
			_, _ = fmt.Fprint(status, err.Error())
		}
		fmt.Fprintf(os.Stderr, "container-init: %v\n", err)
		return 126
	}
	fset := flag.NewFlagSet("container-init", flag.ContinueOnError)
	specFile := fset.String("spec", "", "the container's spec (JSON)")
	if err := fset.Parse(args); err != nil {
		return fail(err)
	}
	data, err := os.ReadFile(*specFile)
	if err != nil {
		return fail(err)
	}
	var spec Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		return fail(fmt.Errorf("%s: %w", *specFile, err))
	}
	if len(spec.Argv) == 0 {
		return fail(errors.New("no command: the image has no entrypoint and the container no command"))
	}
	// Parent-death signal and exec must happen on one thread.
	runtime.LockOSThread()
	if err := setUp(&spec); err != nil {
		return fail(err)
	}
	path, err := lookPath(spec.Argv[0], spec.Env)
	if err != nil {
		return fail(err)
	}
	if err := syscall.Exec(path, spec.Argv, spec.Env); err != nil {
		return fail(fmt.Errorf("exec %s: %w", spec.Argv[0], err))
	}
	return 0
}

func setUp(spec *Spec) error {
	if spec.Hostname != "" {
		if err := unix.Sethostname([]byte(spec.Hostname)); err != nil {
			return fmt.Errorf("setting the hostname: %w", err)
		}
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making mounts private: %w", err)
	}
	root := spec.Root
	if err := unix.Mount("tmpfs", root, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
		return fmt.Errorf("root file system: %w", err)
	}
	for _, d := range hostDirs {
		if err := copyHostDir(root, d); err != nil {
			return err
		}
	}
	if err := mkdirMount(root, "/proc", "proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return err
	}
	if err := bind(root, "/dev", "/dev", false, true); err != nil {
		return err
	}
	if err := bind(root, "/sys", "/sys", true, true); err != nil {
		return err
	}
	for _, d := range []string{"/tmp", "/run", "/var/tmp"} {
		if err := mkdirMount(root, d, "tmpfs", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777"); err != nil {
			return err
		}
	}
	if err := imageFiles(root, spec.Files); err != nil {
		return err
	}
	for _, m := range spec.Mounts {
		if err := volume(root, m); err != nil {
			return err
		}
	}
	if spec.ReadOnlyRoot {
		if err := unix.Mount("", root, "", unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
			return fmt.Errorf("read-only root file system: %w", err)
		}
	}
	if err := unix.Chroot(root); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	dir := spec.Dir
	if dir == "" {
		dir = "/"
	}
	if err := unix.Chdir(dir); err != nil {
		return fmt.Errorf("working directory %s: %w", dir, err)
	}
	groups := make([]int, 0, len(spec.Groups))
	for _, g := range spec.Groups {
		groups = append(groups, int(g))
	}
	if err := syscall.Setgroups(groups); err != nil {
		return fmt.Errorf("supplementary groups: %w", err)
	}
	if err := syscall.Setgid(int(spec.GID)); err != nil {
		return fmt.Errorf("group %d: %w", spec.GID, err)
	}
	if err := syscall.Setuid(int(spec.UID)); err != nil {
		return fmt.Errorf("user %d: %w", spec.UID, err)
	}
	// Changing credentials clears the parent-death signal: set it again, so the container
	// dies with the kubelet that started it.
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
		return fmt.Errorf("parent-death signal: %w", err)
	}
	if spec.NoNewPrivileges {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("no_new_privs: %w", err)
		}
	}
	return nil
}

// copyHostDir makes host directory d visible read-only at the same path under root.
func copyHostDir(root, d string) error {
	info, err := os.Lstat(d)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if info.Mode()&fs.ModeSymlink != 0 {
		target, err := os.Readlink(d)
		if err != nil {
			return err
		}
		return os.Symlink(target, filepath.Join(root, d))
	}
	return bind(root, d, d, true, false)
}

// bind binds host path source at target under root, read-only if asked.
func bind(root, source, target string, readOnly, recursive bool) error {
	dst := filepath.Join(root, target)
	info, err := os.Stat(source)
	if err != nil {
		return fmt.Errorf("volume source %s: %w", source, err)
	}
	if info.IsDir() {
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return fmt.Errorf("mount point %s: %w", target, err)
		}
	} else {
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return fmt.Errorf("mount point %s: %w", target, err)
		}
		f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return fmt.Errorf("mount point %s: %w", target, err)
		}
		_ = f.Close()
	}
	flags := uintptr(unix.MS_BIND)
	if recursive {
		flags |= unix.MS_REC
	}
	if err := unix.Mount(source, dst, "", flags, ""); err != nil {
		return fmt.Errorf("binding %s at %s: %w", source, target, err)
	}
	if readOnly {
		if err := unix.Mount("", dst, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("making %s read-only: %w", target, err)
		}
	}
	return nil
}

func mkdirMount(root, target, source, fstype string, flags uintptr, data string) error {
	dst := filepath.Join(root, target)
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return fmt.Errorf("mount point %s: %w", target, err)
	}
	if err := unix.Mount(source, dst, fstype, flags, data); err != nil {
		return fmt.Errorf("mounting %s at %s: %w", fstype, target, err)
	}
	return nil
}

// imageFiles binds the image's own files. A file's directory is replaced by a fresh tmpfs
// when it exists on the host (the image's /usr/local/bin holds only the image's programs).
func imageFiles(root string, files map[string]string) error {
	covered := map[string]bool{}
	for target, source := range files {
		parent := filepath.Dir(target)
		if !covered[parent] {
			if _, err := os.Stat(filepath.Join(root, parent)); err == nil {
				if err := mkdirMount(root, parent, "tmpfs", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
					return err
				}
			}
			covered[parent] = true
		}
		if err := bind(root, source, target, true, false); err != nil {
			return fmt.Errorf("image file %s: %w", target, err)
		}
	}
	return nil
}

func volume(root string, m Mount) error {
	if !m.Full {
		return bind(root, m.Source, m.Target, m.ReadOnly, true)
	}
	// One page of tmpfs, filled by a root-owned file in a sticky directory: writes fail with
	// ENOSPC, and the container cannot free the space.
	dst := filepath.Join(root, m.Target)
	if err := mkdirMount(root, m.Target, "tmpfs", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size=4k,mode=1777"); err != nil {
		return err
	}
	filler, err := os.OpenFile(filepath.Join(dst, ".full"), os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer filler.Close()
	block := make([]byte, 4096)
	for {
		if _, err := filler.Write(block); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return nil
			}
			return fmt.Errorf("filling %s: %w", m.Target, err)
		}
	}
}

// lookPath resolves a command the way a container runtime does: as given when it has a
// slash, else along the container's PATH (inside the new root).
func lookPath(name string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		candidate := filepath.Join(dir, name)
		if info, err := os.Stat(candidate); err == nil && !info.IsDir() && info.Mode()&0o111 != 0 {
			return candidate, nil
		}
	}
	return "", fmt.Errorf("exec: %q: executable file not found in $PATH", name)
}
