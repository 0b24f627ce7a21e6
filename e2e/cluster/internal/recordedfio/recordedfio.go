// Package recordedfio is a stand-in for fio in the local cluster's scale mode: pie-cluster run
// under the name `fio` (bound at /usr/local/bin/fio in the agent's image, ahead of the real
// one in PATH) prints a recorded fio JSON output and succeeds at once, so that a bench with
// thousands of probe Pods loads the API server rather than the disk. It does no I/O.
package recordedfio

import (
	"fmt"
	"io"
	"os"
	"slices"
)

// OutputEnv names the file whose content is printed: a recorded `fio --output-format=json`
// output (e.g. agent/tests/fixtures/fio-3.33-ok.json).
const OutputEnv = "PIE_CLUSTER_FIO_OUTPUT"

// Main is `fio ARGS...`; it returns the exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	if !slices.Contains(args, "--output-format=json") {
		fmt.Fprintln(stderr, "fio (pie-cluster's recorded stand-in): only --output-format=json runs are recorded")
		return 1
	}
	path := os.Getenv(OutputEnv)
	if path == "" {
		fmt.Fprintf(stderr, "fio (pie-cluster's recorded stand-in): %s is not set\n", OutputEnv)
		return 1
	}
	data, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintf(stderr, "fio (pie-cluster's recorded stand-in): %v\n", err)
		return 1
	}
	if _, err := stdout.Write(data); err != nil {
		fmt.Fprintf(stderr, "fio (pie-cluster's recorded stand-in): %v\n", err)
		return 1
	}
	return 0
}
