package supervisor

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"strings"
	"testing"
	"time"

	"gopkg.in/go-jose/go-jose.v2/jwt"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/kubernetes/pkg/apis/core"
	"k8s.io/kubernetes/pkg/serviceaccount"
)

// objects is what the validator finds in "the cluster" of these tests.
type objects map[string]metav1.ObjectMeta

func (o objects) meta(kind, name string) (metav1.ObjectMeta, error) {
	m, ok := o[kind+"/"+name]
	if !ok {
		return m, apierrors.NewNotFound(schema.GroupResource{Resource: kind}, name)
	}
	return m, nil
}

func (o objects) GetServiceAccount(_ context.Context, _, name string) (*v1.ServiceAccount, error) {
	m, err := o.meta("serviceaccount", name)
	return &v1.ServiceAccount{ObjectMeta: m}, err
}

func (o objects) GetPod(_ context.Context, _, name string) (*v1.Pod, error) {
	m, err := o.meta("pod", name)
	return &v1.Pod{ObjectMeta: m}, err
}

func (o objects) GetSecret(_ context.Context, _, name string) (*v1.Secret, error) {
	m, err := o.meta("secret", name)
	return &v1.Secret{ObjectMeta: m}, err
}

func (o objects) GetNode(_ context.Context, name string) (*v1.Node, error) {
	m, err := o.meta("node", name)
	return &v1.Node{ObjectMeta: m}, err
}

func (o objects) GetValidatingWebhookConfiguration(context.Context, string) (*admissionregistrationv1.ValidatingWebhookConfiguration, error) {
	return nil, apierrors.NewNotFound(schema.GroupResource{}, "")
}

func (o objects) GetMutatingWebhookConfiguration(context.Context, string) (*admissionregistrationv1.MutatingWebhookConfiguration, error) {
	return nil, apierrors.NewNotFound(schema.GroupResource{}, "")
}

// TestMintedTokensAreJudgedByUpstreamsAuthenticator checks minted tokens with the apiserver's
// own service-account authenticator and validator: a fresh one is accepted with its pod and
// node claims, an expired one and one for another audience are refused.
func TestMintedTokensAreJudgedByUpstreamsAuthenticator(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	const issuer = "https://127.0.0.1:6443"
	sa := metav1.ObjectMeta{Name: "agent", Namespace: "ns", UID: "sa-uid"}
	pod := metav1.ObjectMeta{Name: "probe", Namespace: "ns", UID: "pod-uid"}
	node := metav1.ObjectMeta{Name: "pie-node-1", UID: "node-uid"}
	cluster := objects{"serviceaccount/agent": sa, "pod/probe": pod, "node/pie-node-1": node}
	bound := boundObjects{
		serviceAccount: core.ServiceAccount{ObjectMeta: sa},
		pod:            &core.Pod{ObjectMeta: pod},
		node:           &core.Node{ObjectMeta: node},
	}
	keys, err := serviceaccount.StaticPublicKeysGetter([]any{&key.PublicKey})
	if err != nil {
		t.Fatal(err)
	}
	auth := serviceaccount.JWTTokenAuthenticator([]string{issuer}, keys, authenticator.Audiences{issuer}, serviceaccount.NewValidator(cluster))
	now := time.Now()
	check := func(opts TokenOptions, audience string) (*authenticator.Response, error) {
		t.Helper()
		opts.ExpiresIn = time.Hour
		token, err := mint(context.Background(), issuer, key, bound, opts, now)
		if err != nil {
			t.Fatal(err)
		}
		ctx := authenticator.WithAudiences(context.Background(), authenticator.Audiences{audience})
		resp, ok, err := auth.AuthenticateToken(ctx, token)
		if err == nil && !ok {
			t.Fatalf("the authenticator did not take the token as its own: %s", token)
		}
		return resp, err
	}

	resp, err := check(TokenOptions{Audiences: []string{"pie"}}, "pie")
	if err != nil {
		t.Fatalf("fresh token refused: %v", err)
	}
	if got := resp.User.GetName(); got != "system:serviceaccount:ns:agent" {
		t.Errorf("user %q", got)
	}
	extra := resp.User.GetExtra()
	for k, want := range map[string]string{
		"authentication.kubernetes.io/pod-name":  "probe",
		"authentication.kubernetes.io/pod-uid":   "pod-uid",
		"authentication.kubernetes.io/node-name": "pie-node-1",
		"authentication.kubernetes.io/node-uid":  "node-uid",
	} {
		if got := extra[k]; len(got) != 1 || got[0] != want {
			t.Errorf("extra %s = %v, want %s", k, got, want)
		}
	}
	if _, err := check(TokenOptions{Audiences: []string{"pie"}, Expired: true}, "pie"); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("expired token: %v", err)
	}
	if _, err := check(TokenOptions{Audiences: []string{"other"}}, "pie"); err == nil || !strings.Contains(err.Error(), "audience") {
		t.Errorf("token for another audience: %v", err)
	}
}

// TestExpiredTokensExpiredBeyondTheLeeway checks the times of an expired token: exp is
// expiredAgo in the past (more than the validator's minute of leeway), iat and nbf the
// lifetime before it.
func TestExpiredTokensExpiredBeyondTheLeeway(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_800_000_000, 0)
	bound := boundObjects{serviceAccount: core.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "a", Namespace: "b", UID: "u"}}}
	token, err := mint(context.Background(), "iss", key, bound, TokenOptions{ExpiresIn: 10 * time.Minute, Expired: true, Audiences: []string{"x"}}, now)
	if err != nil {
		t.Fatal(err)
	}
	claims := decodeClaims(t, token, &key.PublicKey)
	if exp := claims.Expiry.Time(); !exp.Equal(now.Add(-expiredAgo)) || expiredAgo <= time.Minute {
		t.Errorf("exp %v, want %v (more than a minute before now)", exp, now.Add(-expiredAgo))
	}
	issued := now.Add(-expiredAgo - 10*time.Minute)
	if !claims.IssuedAt.Time().Equal(issued) || !claims.NotBefore.Time().Equal(issued) {
		t.Errorf("iat %v nbf %v, want %v", claims.IssuedAt.Time(), claims.NotBefore.Time(), issued)
	}
}

func decodeClaims(t *testing.T, token string, key *rsa.PublicKey) jwt.Claims {
	t.Helper()
	parsed, err := jwt.ParseSigned(token)
	if err != nil {
		t.Fatal(err)
	}
	var claims jwt.Claims
	if err := parsed.Claims(key, &claims); err != nil {
		t.Fatal(err)
	}
	return claims
}
