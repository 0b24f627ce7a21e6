// pie-cluster is the local Kubernetes of pie's tests and demo (docs/testing.md): Kubernetes'
// own kube-apiserver (embedded etcd), kube-controller-manager and kube-scheduler, a process
// kubelet that runs containers as local processes, and a test provisioner, all on 127.0.0.1.
//
//	pie-cluster up [--dir D] [--nodes N] [--node-heartbeat 10s] [--image REF=BINARY[,OPTION]...]...
//	pie-cluster down [--dir D]
//	pie-cluster stop-component [--dir D] [--kill] [--grace 15s] NAME
//	pie-cluster start-component [--dir D] [--timeout 2m] NAME
//	pie-cluster compact [--dir D]
//	pie-cluster token [--dir D] --namespace NS --service-account SA [--pod P] [--node N] [--audience A]... [--expires-in 1h] [--expired]
//	kubectl ...            (this binary, called as kubectl)
//	fio ...                (this binary, called as fio: a recorded fio, for scale benches)
//
// The other subcommands are the cluster's processes, started by the supervisor.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pie-rs/pie/e2e/cluster/internal/components"
	"github.com/pie-rs/pie/e2e/cluster/internal/container"
	"github.com/pie-rs/pie/e2e/cluster/internal/kubelet"
	"github.com/pie-rs/pie/e2e/cluster/internal/provisioner"
	"github.com/pie-rs/pie/e2e/cluster/internal/recordedfio"
	"github.com/pie-rs/pie/e2e/cluster/internal/supervisor"
)

const usage = `usage:
  pie-cluster up [--dir D] [--nodes N] [--node-heartbeat 10s] [--disable-controller NAME]...
                 [--image REF=BINARY[,user=UID:GID][,cmd=ARGS][,env=N=V]...[,file=PATH:HOST]...]... [--foreground]
  pie-cluster down [--dir D]
  pie-cluster stop-component [--dir D] [--kill] [--grace 15s] NAME
  pie-cluster start-component [--dir D] [--timeout 2m] NAME
  pie-cluster compact [--dir D]
  pie-cluster token [--dir D] --namespace NS --service-account SA [--pod P] [--node N]
                    [--audience A]... [--expires-in 1h] [--expired]
  pie-cluster kubectl ARGS...   (or this binary called as kubectl)
D defaults to $PIE_CLUSTER_DIR, else target/cluster. NAME is one of etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, provisioner, kubelet.
`

func main() {
	switch filepath.Base(os.Args[0]) {
	case "kubectl":
		os.Exit(components.Kubectl(os.Args[1:]))
	case "fio":
		os.Exit(recordedfio.Main(os.Args[1:], os.Stdout, os.Stderr))
	}
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	args := os.Args[2:]
	switch os.Args[1] {
	case "up", "supervise":
		os.Exit(up(os.Args[1], args))
	case "down":
		fs := flag.NewFlagSet("down", flag.ContinueOnError)
		dir := fs.String("dir", defaultDir(), "state directory")
		if fs.Parse(args) != nil {
			os.Exit(2)
		}
		os.Exit(supervisor.Down(absolute(*dir)))
	case "stop-component", "start-component", "compact", "token":
		os.Exit(clusterCommand(os.Args[1], args))
	case "kubectl":
		os.Exit(components.Kubectl(args))
	case "etcd":
		os.Exit(components.Etcd(args))
	case "kube-apiserver":
		os.Exit(components.APIServer(args))
	case "kube-controller-manager":
		os.Exit(components.ControllerManager(args))
	case "kube-scheduler":
		os.Exit(components.Scheduler(args))
	case "kubelet":
		os.Exit(kubelet.Main(args))
	case "provisioner":
		os.Exit(provisioner.Main(args))
	case "container-init":
		os.Exit(container.Main(args))
	case "-h", "--help", "help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "pie-cluster: unknown command %q\n%s", os.Args[1], usage)
		os.Exit(2)
	}
}

type images []string

func (i *images) String() string     { return strings.Join(*i, " ") }
func (i *images) Set(v string) error { *i = append(*i, v); return nil }

// clusterCommand runs one of the commands that work on a running cluster. Flags may come
// before or after the component's name; bad usage gets one line on stderr and exit code 2.
func clusterCommand(name string, args []string) int {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	dir := fs.String("dir", defaultDir(), "state directory")
	var (
		kill       bool
		grace      time.Duration
		timeout    time.Duration
		token      supervisor.TokenOptions
		audiences  images
		positional = 0
		usageLine  string
	)
	switch name {
	case "stop-component":
		fs.BoolVar(&kill, "kill", false, "SIGKILL at once instead of SIGTERM")
		fs.DurationVar(&grace, "grace", 15*time.Second, "SIGKILL after this long if SIGTERM has not stopped it")
		positional, usageLine = 1, "pie-cluster stop-component [--dir D] [--kill] [--grace 15s] NAME"
	case "start-component":
		fs.DurationVar(&timeout, "timeout", 2*time.Minute, "how long to wait for it to be healthy")
		positional, usageLine = 1, "pie-cluster start-component [--dir D] [--timeout 2m] NAME"
	case "compact":
		usageLine = "pie-cluster compact [--dir D]"
	case "token":
		fs.StringVar(&token.Namespace, "namespace", "", "namespace of the ServiceAccount (and the Pod)")
		fs.StringVar(&token.ServiceAccount, "service-account", "", "the ServiceAccount")
		fs.StringVar(&token.Pod, "pod", "", "bind the token to this Pod (and its node)")
		fs.StringVar(&token.Node, "node", "", "bind the token to this Node (with --pod: the node of the pod claims)")
		fs.Var(&audiences, "audience", "an audience (repeatable; default: the apiserver's)")
		fs.DurationVar(&token.ExpiresIn, "expires-in", time.Hour, "lifetime")
		fs.BoolVar(&token.Expired, "expired", false, "make it expired: exp 5 minutes ago, iat and nbf --expires-in before")
		usageLine = "pie-cluster token [--dir D] --namespace NS --service-account SA [--pod P] [--node N] [--audience A]... [--expires-in 1h] [--expired]"
	}
	var rest []string
	for len(args) > 0 {
		if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
			fmt.Printf("usage: %s\n", usageLine)
			fs.SetOutput(os.Stdout)
			fs.PrintDefaults()
			return 0
		} else if err != nil {
			fmt.Fprintf(os.Stderr, "pie-cluster %s: %v (usage: %s)\n", name, err, usageLine)
			return 2
		}
		args = fs.Args()
		if len(args) > 0 {
			rest = append(rest, args[0])
			args = args[1:]
		}
	}
	if len(rest) != positional {
		what := "no arguments"
		if positional == 1 {
			what = "one component NAME"
		}
		fmt.Fprintf(os.Stderr, "pie-cluster %s: expected %s, got %d (usage: %s)\n", name, what, len(rest), usageLine)
		return 2
	}
	if name == "token" && (token.Namespace == "" || token.ServiceAccount == "") {
		fmt.Fprintf(os.Stderr, "pie-cluster token: --namespace and --service-account are required (usage: %s)\n", usageLine)
		return 2
	}
	d := absolute(*dir)
	switch name {
	case "stop-component":
		return supervisor.StopComponent(d, rest[0], kill, grace)
	case "start-component":
		return supervisor.StartComponent(d, rest[0], timeout)
	case "compact":
		return supervisor.Compact(d)
	}
	token.Audiences = audiences
	return supervisor.Token(d, token)
}

func up(name string, args []string) int {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	var opts supervisor.Options
	var imgs images
	fs.StringVar(&opts.Dir, "dir", defaultDir(), "state directory (kubeconfig, logs, pids)")
	fs.IntVar(&opts.Nodes, "nodes", 3, "number of nodes")
	fs.StringVar(&opts.NodePrefix, "node-prefix", "pie-node-", "node names are <prefix>1..<prefix>N")
	fs.Var(&imgs, "image", "image the process kubelet can run: REF=BINARY[,user=UID:GID][,cmd=ARGS] (repeatable)")
	fs.IntVar(&opts.APIServerPort, "apiserver-port", 0, "apiserver port on 127.0.0.1 (0: a free one)")
	fs.DurationVar(&opts.Timeout, "timeout", 3*time.Minute, "how long to wait for the cluster to be ready")
	fs.DurationVar(&opts.Heartbeat, "node-heartbeat", 0, "the nodes' Lease renewal interval (0: kubelet's 10s; status every three; longer for thousands of nodes)")
	var disabled images
	fs.Var(&disabled, "disable-controller", "a kube-controller-manager controller not to run, e.g. cronjob-controller (repeatable)")
	fs.BoolVar(&opts.Foreground, "foreground", false, "supervise in this process instead of in the background")
	fs.BoolVar(&opts.StopOnStdinEOF, "stop-on-stdin-eof", false, "stop the cluster when stdin closes (with --foreground)")
	fs.BoolVar(&opts.RemoveDir, "remove-dir-on-stop", false, "delete the state directory when the cluster stops (with --foreground)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "pie-cluster: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	opts.Images = imgs
	opts.DisabledControllers = disabled
	opts.Dir = absolute(opts.Dir)
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "pie-cluster: %v\n", err)
		return 1
	}
	opts.Self = self
	if name == "supervise" {
		return supervisor.Supervise(opts)
	}
	return supervisor.Up(opts)
}

func defaultDir() string {
	if d := os.Getenv("PIE_CLUSTER_DIR"); d != "" {
		return d
	}
	return filepath.Join("target", "cluster")
}

func absolute(dir string) string {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return dir
	}
	return abs
}
