package supervisor

import (
	"context"
	"fmt"
	"time"

	"gopkg.in/go-jose/go-jose.v2/jwt"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/keyutil"
	"k8s.io/kubernetes/pkg/apis/core"
	"k8s.io/kubernetes/pkg/serviceaccount"
)

// TokenOptions are the flags of `pie-cluster token`.
type TokenOptions struct {
	Namespace, ServiceAccount string
	// Pod binds the token to a Pod of Namespace (its node too, when it is scheduled); Node to a
	// Node, or, with Pod, names the node of the pod claims instead of the Pod's own.
	Pod, Node string
	// Audiences default to the apiserver's own (its issuer).
	Audiences []string
	ExpiresIn time.Duration
	// Expired makes a token that expired expiredAgo ago, issued ExpiresIn before that.
	Expired bool
}

// expiredAgo is how long ago an --expired token expired: beyond the minute of leeway the
// apiserver's validator allows (jwt.DefaultLeeway), so it is refused as expired.
const expiredAgo = 5 * time.Minute

// boundObjects are the objects a token names, with their UIDs as the apiserver has them.
type boundObjects struct {
	serviceAccount core.ServiceAccount
	pod            *core.Pod
	node           *core.Node
}

// Token is `pie-cluster token`: it prints a service-account token signed with the cluster's
// signing key and issuer, with the claims kube-apiserver's TokenRequest puts in one
// (k8s.io/kubernetes/pkg/serviceaccount's Claims and JWT generator), the UIDs looked up in the
// cluster. Unlike TokenRequest it can make tokens that are already expired, that live less
// than 10 minutes, or that bind a Pod running as another ServiceAccount or a node other than
// the Pod's.
func Token(dir string, opts TokenOptions) int {
	if opts.ExpiresIn <= 0 {
		return fail("--expires-in must be positive, not %s", opts.ExpiresIn)
	}
	st := state{dir: dir}
	info, err := st.runningInfo()
	if err != nil {
		return fail("%v", err)
	}
	config, err := clientcmd.BuildConfigFromFlags("", st.path("kubeconfig"))
	if err != nil {
		return fail("%v", err)
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return fail("%v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	objects, err := lookUp(ctx, client, opts)
	if err != nil {
		return fail("%v", err)
	}
	key, err := keyutil.PrivateKeyFromFile(info.ServiceAccountKey)
	if err != nil {
		return fail("the service-account signing key: %v", err)
	}
	if len(opts.Audiences) == 0 {
		opts.Audiences = []string{info.ServiceAccountIssuer}
	}
	token, err := mint(ctx, info.ServiceAccountIssuer, key, objects, opts, time.Now())
	if err != nil {
		return fail("%v", err)
	}
	fmt.Println(token)
	return 0
}

// lookUp gets the ServiceAccount, Pod and Node a token names, as TokenRequest does.
func lookUp(ctx context.Context, client kubernetes.Interface, opts TokenOptions) (boundObjects, error) {
	var out boundObjects
	sa, err := client.CoreV1().ServiceAccounts(opts.Namespace).Get(ctx, opts.ServiceAccount, metav1.GetOptions{})
	if err != nil {
		return out, lookUpError("serviceaccount", opts.Namespace+"/"+opts.ServiceAccount, err)
	}
	out.serviceAccount = core.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa.Name, Namespace: sa.Namespace, UID: sa.UID}}
	nodeName := opts.Node
	if opts.Pod != "" {
		pod, err := client.CoreV1().Pods(opts.Namespace).Get(ctx, opts.Pod, metav1.GetOptions{})
		if err != nil {
			return out, lookUpError("pod", opts.Namespace+"/"+opts.Pod, err)
		}
		out.pod = &core.Pod{ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID}}
		if nodeName == "" {
			nodeName = pod.Spec.NodeName
		}
	}
	if nodeName != "" {
		node, err := client.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
		if err != nil {
			return out, lookUpError("node", nodeName, err)
		}
		out.node = &core.Node{ObjectMeta: metav1.ObjectMeta{Name: node.Name, UID: node.UID}}
	}
	return out, nil
}

func lookUpError(kind, name string, err error) error {
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("%s %s not found", kind, name)
	}
	return fmt.Errorf("getting %s %s: %w", kind, name, err)
}

// mint signs the claims upstream's serviceaccount.Claims makes for objects, moved back in time
// for an expired token.
func mint(ctx context.Context, issuer string, key any, objects boundObjects, opts TokenOptions, now time.Time) (string, error) {
	public, private, err := serviceaccount.Claims(objects.serviceAccount, objects.pod, nil, objects.node, nil, nil,
		int64(opts.ExpiresIn/time.Second), 0, opts.Audiences, nil)
	if err != nil {
		return "", err
	}
	// Claims reads the clock itself: set the times from now, so that they are what was asked.
	issued := now
	if opts.Expired {
		issued = now.Add(-expiredAgo - opts.ExpiresIn)
	}
	public.IssuedAt = jwt.NewNumericDate(issued)
	public.NotBefore = jwt.NewNumericDate(issued)
	public.Expiry = jwt.NewNumericDate(issued.Add(opts.ExpiresIn))
	generator, err := serviceaccount.JWTTokenGenerator(issuer, key)
	if err != nil {
		return "", err
	}
	return generator.GenerateToken(ctx, public, private)
}
