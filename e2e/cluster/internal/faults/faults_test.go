package faults

import (
	"strings"
	"testing"
	"time"
)

func TestParseProvision(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Op
		err  string
	}{
		{in: "", want: Op{}},
		{in: " fail ", want: Op{Action: Fail}},
		{in: "hang", want: Op{Action: Hang}},
		{in: "delay=20s", want: Op{Action: Delay, Delay: 20 * time.Second}},
		{in: "delay=soon", err: "delay is not a duration"},
		{in: "delay=-1s", err: "delay is not a duration"},
		{in: "stuck", err: "expected one of fail, hang, delay=<duration>"},
	} {
		got, err := ParseProvision(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) || !strings.Contains(err.Error(), Provision) {
				t.Errorf("ParseProvision(%q) error = %v, want one naming %s and saying %q", c.in, err, Provision, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("ParseProvision(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
}

func TestParseDelete(t *testing.T) {
	if op, err := ParseDelete("stuck"); err != nil || op.Action != Stuck {
		t.Errorf("stuck: %+v, %v", op, err)
	}
	if op, err := ParseDelete("delay=3s"); err != nil || op != (Op{Action: Delay, Delay: 3 * time.Second}) {
		t.Errorf("delay=3s: %+v, %v", op, err)
	}
	if _, err := ParseDelete("fail"); err == nil || !strings.Contains(err.Error(), "expected one of stuck, delay=<duration>") {
		t.Errorf("fail is not a delete fault: %v", err)
	}
}

func TestParseIOAndWords(t *testing.T) {
	for in, want := range map[string]IOFault{"": IONone, "read-only": IOReadOnly, "full": IOFull} {
		if got, err := ParseIO(in); err != nil || got != want {
			t.Errorf("ParseIO(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseIO("slow"); err == nil || !strings.Contains(err.Error(), "expected read-only or full") {
		t.Errorf("ParseIO(slow): %v", err)
	}
	if on, err := ParseWord(Mount, "fail", "fail"); !on || err != nil {
		t.Errorf("mount=fail: %v %v", on, err)
	}
	if on, err := ParseWord(Mount, "false", "fail"); on || err != nil {
		t.Errorf("mount=false heals: %v %v", on, err)
	}
	if _, err := ParseWord(Heartbeat, "pause", "stop"); err == nil || !strings.Contains(err.Error(), Heartbeat) {
		t.Errorf("heartbeat=pause: %v", err)
	}
	if notReady, err := ParseReady("false"); !notReady || err != nil {
		t.Errorf("ready=false: %v %v", notReady, err)
	}
	if notReady, err := ParseReady("true"); notReady || err != nil {
		t.Errorf("ready=true: %v %v", notReady, err)
	}
	if _, err := ParseReady("no"); err == nil {
		t.Error("ready=no must be refused")
	}
	if d, err := ParseStartDelay("1m30s"); err != nil || d != 90*time.Second {
		t.Errorf("start-delay=1m30s: %v %v", d, err)
	}
	if _, err := ParseStartDelay("later"); err == nil || !strings.Contains(err.Error(), StartDelay) {
		t.Errorf("start-delay=later: %v", err)
	}
}
