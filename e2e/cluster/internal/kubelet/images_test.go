package kubelet

import (
	"reflect"
	"strings"
	"testing"
)

func TestLookup(t *testing.T) {
	agent := Image{Entrypoint: []string{"/usr/local/bin/pie-agent"}}
	pinned := Image{Entrypoint: []string{"/usr/local/bin/old"}}
	shell := ShellImage()
	m := ImageMap{
		"ghcr.io/pie-rs/pie-agent":     agent,
		"ghcr.io/pie-rs/pie-agent:0.0": pinned,
		"docker.io/library/busybox":    shell,
	}
	for ref, want := range map[string]*Image{
		"ghcr.io/pie-rs/pie-agent:0.1.0":          &agent,
		"ghcr.io/pie-rs/pie-agent":                &agent,
		"ghcr.io/pie-rs/pie-agent@sha256:abcd":    &agent,
		"ghcr.io/pie-rs/pie-agent:0.0":            &pinned,
		"busybox":                                 &shell,
		"busybox:1.37":                            &shell,
		"registry:5000/pie-agent:1":               nil,
		"ghcr.io/pie-rs/pie-controller:0.1.0":     nil,
		"ghcr.io/pie-rs/pie-agent-other:latest":   nil,
		"localhost:5000/ghcr.io/pie-rs/pie-agent": nil,
	} {
		got, ok := m.Lookup(ref)
		if want == nil {
			if ok {
				t.Errorf("Lookup(%q) found %+v; an unmapped image must not be found (ErrImagePull)", ref, got)
			}
			continue
		}
		if !ok || !reflect.DeepEqual(got, *want) {
			t.Errorf("Lookup(%q) = %+v, %v; want %+v", ref, got, ok, *want)
		}
	}
}

func TestParseImageFlag(t *testing.T) {
	ref, img, err := ParseImageFlag("ghcr.io/pie-rs/pie-agent=/x/pie-agent,user=1001:1001,cmd=probe --once," +
		"env=A=b=c,file=/usr/local/bin/fio:/x/fio,env=B=")
	if err != nil {
		t.Fatal(err)
	}
	want := Image{
		Entrypoint: []string{"/usr/local/bin/pie-agent"},
		Cmd:        []string{"probe", "--once"},
		User:       "1001:1001",
		Files:      map[string]string{"/usr/local/bin/pie-agent": "/x/pie-agent", "/usr/local/bin/fio": "/x/fio"},
		Env:        []string{"A=b=c", "B="},
	}
	if ref != "ghcr.io/pie-rs/pie-agent" || !reflect.DeepEqual(img, want) {
		t.Errorf("got %q %+v", ref, img)
	}
	for in, says := range map[string]string{
		"no-binary":                    "expected REFERENCE=BINARY",
		"=/bin/true":                   "expected REFERENCE=BINARY",
		"a=/bin/true,user=x":           `user "x" is not UID[:GID]`,
		"a=/bin/true,gpu=1":            `unknown option "gpu"`,
		"a=/bin/true,env=X":            `env="X" is not NAME=VALUE`,
		"a=/bin/true,env==1":           `env="=1" is not NAME=VALUE`,
		"a=/bin/true,file=x":           `file="x" is not /PATH:HOST_PATH`,
		"a=/bin/true,file=rel:/bin/ls": `file="rel:/bin/ls" is not /PATH:HOST_PATH`,
		"a=/bin/true,file=/x:":         `file="/x:" is not /PATH:HOST_PATH`,
	} {
		if _, _, err := ParseImageFlag(in); err == nil || !strings.Contains(err.Error(), says) {
			t.Errorf("ParseImageFlag(%q) = %v, want an error saying %q", in, err, says)
		}
	}
}

func TestParseUser(t *testing.T) {
	for in, want := range map[string][2]uint32{"": {0, 0}, "1001": {1001, 0}, "1001:2002": {1001, 2002}} {
		uid, gid, err := parseUser(in)
		if err != nil || [2]uint32{uid, gid} != want {
			t.Errorf("parseUser(%q) = %d:%d %v, want %v", in, uid, gid, err, want)
		}
	}
	if _, _, err := parseUser("1001:staff"); err == nil {
		t.Error("a group name must be refused")
	}
}
