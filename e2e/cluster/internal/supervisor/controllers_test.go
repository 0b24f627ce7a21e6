package supervisor

import (
	"slices"
	"strings"
	"testing"
)

func TestDisabledControllers(t *testing.T) {
	enabled := enabledControllers([]string{"cronjob-controller"})
	if slices.Contains(enabled, "cronjob-controller") || len(enabled) != len(controllers)-1 {
		t.Errorf("enabledControllers without cronjob-controller = %v", enabled)
	}
	if got := enabledControllers(nil); !slices.Equal(got, controllers) {
		t.Errorf("enabledControllers(nil) = %v, want all of %v", got, controllers)
	}
	if err := checkDisabledControllers([]string{"cronjob-controller", "job-controller"}); err != nil {
		t.Errorf("known controllers refused: %v", err)
	}
	err := checkDisabledControllers([]string{"cronjob"})
	if err == nil || !strings.Contains(err.Error(), `--disable-controller "cronjob": not one the cluster runs`) {
		t.Errorf("an unknown controller got %v, want an error naming it", err)
	}
}
