// Package pki makes the local cluster's certificates, keys and kubeconfigs: one CA that signs
// the apiserver's serving certificate and every client certificate, and the service-account
// signing key. Everything is for 127.0.0.1 only and lives in the cluster's state directory.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Identity is a client certificate's subject: the user name and the groups RBAC sees.
type Identity struct {
	// File stem of the certificate, key and kubeconfig.
	Name   string
	User   string
	Groups []string
}

// Files are the paths of what Generate wrote.
type Files struct {
	Dir             string
	CACert, CAKey   string
	ServingCert     string
	ServingKey      string
	SAKey, SAPublic string
}

// Cert returns the certificate path of an identity.
func (f Files) Cert(name string) string { return filepath.Join(f.Dir, name+".crt") }

// Key returns the private key path of an identity.
func (f Files) Key(name string) string { return filepath.Join(f.Dir, name+".key") }

// Generate writes a CA, the apiserver serving certificate (for 127.0.0.1 and the in-cluster
// names), one client certificate per identity, and the service-account RSA key pair into dir.
func Generate(dir string, identities []Identity) (Files, error) {
	f := Files{
		Dir:         dir,
		CACert:      filepath.Join(dir, "ca.crt"),
		CAKey:       filepath.Join(dir, "ca.key"),
		ServingCert: filepath.Join(dir, "apiserver.crt"),
		ServingKey:  filepath.Join(dir, "apiserver.key"),
		SAKey:       filepath.Join(dir, "service-account.key"),
		SAPublic:    filepath.Join(dir, "service-account.pub"),
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return f, err
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return f, err
	}
	now := time.Now().Add(-time.Hour)
	caTemplate := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "pie-cluster-ca"},
		NotBefore:             now,
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTemplate, caTemplate, &caKey.PublicKey, caKey)
	if err != nil {
		return f, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return f, err
	}
	if err := writeCert(f.CACert, caDER); err != nil {
		return f, err
	}
	if err := writeKey(f.CAKey, caKey); err != nil {
		return f, err
	}

	serving := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    now,
		NotAfter:     now.Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.0.0.1")},
	}
	if err := issue(ca, caKey, serving, f.ServingCert, f.ServingKey); err != nil {
		return f, err
	}
	for _, id := range identities {
		client := &x509.Certificate{
			SerialNumber: serial(),
			Subject:      pkix.Name{CommonName: id.User, Organization: id.Groups},
			NotBefore:    now,
			NotAfter:     now.Add(365 * 24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}
		if err := issue(ca, caKey, client, f.Cert(id.Name), f.Key(id.Name)); err != nil {
			return f, err
		}
	}

	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return f, err
	}
	if err := writeKey(f.SAKey, saKey); err != nil {
		return f, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return f, err
	}
	return f, os.WriteFile(f.SAPublic, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o600)
}

// ServingCertFor issues a serving certificate for 127.0.0.1 signed by the cluster CA (the
// process kubelet's log server uses one).
func (f Files) ServingCertFor(name string) (certFile, keyFile string, err error) {
	caPEM, err := os.ReadFile(f.CACert)
	if err != nil {
		return "", "", err
	}
	keyPEM, err := os.ReadFile(f.CAKey)
	if err != nil {
		return "", "", err
	}
	caBlock, _ := pem.Decode(caPEM)
	keyBlock, _ := pem.Decode(keyPEM)
	if caBlock == nil || keyBlock == nil {
		return "", "", fmt.Errorf("%s or %s is not PEM", f.CACert, f.CAKey)
	}
	ca, err := x509.ParseCertificate(caBlock.Bytes)
	if err != nil {
		return "", "", err
	}
	caKey, err := x509.ParsePKCS8PrivateKey(keyBlock.Bytes)
	if err != nil {
		return "", "", err
	}
	now := time.Now().Add(-time.Hour)
	template := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    now,
		NotAfter:     now.Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	certFile, keyFile = f.Cert(name), f.Key(name)
	signer, ok := caKey.(crypto.Signer)
	if !ok {
		return "", "", fmt.Errorf("%s is not a signing key", f.CAKey)
	}
	return certFile, keyFile, issue(ca, signer, template, certFile, keyFile)
}

// WriteKubeconfig writes a kubeconfig for server that authenticates with an identity's client
// certificate, with the certificate data embedded so the file can be copied anywhere.
func (f Files) WriteKubeconfig(path, server, name string) error {
	ca, err := os.ReadFile(f.CACert)
	if err != nil {
		return err
	}
	cert, err := os.ReadFile(f.Cert(name))
	if err != nil {
		return err
	}
	key, err := os.ReadFile(f.Key(name))
	if err != nil {
		return err
	}
	config := clientcmdapi.NewConfig()
	config.Clusters["pie-cluster"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca}
	config.AuthInfos[name] = &clientcmdapi.AuthInfo{ClientCertificateData: cert, ClientKeyData: key}
	config.Contexts["pie-cluster"] = &clientcmdapi.Context{Cluster: "pie-cluster", AuthInfo: name}
	config.CurrentContext = "pie-cluster"
	return clientcmd.WriteToFile(*config, path)
}

func issue(ca *x509.Certificate, caKey crypto.Signer, template *x509.Certificate, certFile, keyFile string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.CreateCertificate(rand.Reader, template, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	if err := writeCert(certFile, der); err != nil {
		return err
	}
	return writeKey(keyFile, key)
}

// serial is a random 63-bit certificate serial number (crypto/rand.Read never fails).
func serial() *big.Int {
	var b [8]byte
	_, _ = rand.Read(b[:])
	b[0] &= 0x7f
	return new(big.Int).SetBytes(b[:])
}

func writeCert(path string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
}

func writeKey(path string, key crypto.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}
