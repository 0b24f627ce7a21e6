package recordedfio

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPrintsTheRecording(t *testing.T) {
	recording := filepath.Join(t.TempDir(), "fio.json")
	if err := os.WriteFile(recording, []byte(`{"fio version": "fio-3.33"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv(OutputEnv, recording)
	var out, errOut bytes.Buffer
	if code := Main([]string{"--output-format=json", "--name=pie"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if out.String() != `{"fio version": "fio-3.33"}` {
		t.Errorf("printed %q", out.String())
	}
}

func TestBadUse(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.json")
	for _, c := range []struct {
		env  string
		args []string
		says string
	}{
		{missing, []string{"--name=pie"}, "only --output-format=json"},
		{"", []string{"--output-format=json"}, OutputEnv + " is not set"},
		{missing, []string{"--output-format=json"}, "no such file"},
	} {
		t.Setenv(OutputEnv, c.env)
		var out, errOut bytes.Buffer
		if code := Main(c.args, &out, &errOut); code != 1 || out.Len() != 0 || !strings.Contains(errOut.String(), c.says) {
			t.Errorf("env %q args %v: exit %d, stdout %q, stderr %q; want exit 1 saying %q", c.env, c.args, code, out.String(), errOut.String(), c.says)
		}
	}
}
