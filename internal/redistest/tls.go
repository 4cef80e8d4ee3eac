package redistest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TLSFiles are a throw-away CA and the certificates it signed, as PEM files in a test's
// temporary directory: nothing is committed, nothing outlives the test.
type TLSFiles struct {
	// CA is the CA certificate; OtherCA one that signed nothing here (a wrong CA).
	CA, OtherCA string
	// ServerCert and ServerKey are for 127.0.0.1 and the DNS name "redis.test".
	ServerCert, ServerKey string
	// ClientCert and ClientKey are a client certificate (for --tls-auth-clients yes).
	ClientCert, ClientKey string
	// Client is a TLS configuration that trusts CA and presents the client certificate.
	Client *tls.Config
}

// MustTLSFiles generates a CA, a server and a client certificate (ECDSA P-256, valid for
// an hour) and writes them to a temporary directory.
func MustTLSFiles(tb testing.TB) TLSFiles {
	tb.Helper()
	dir := tb.TempDir()
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			tb.Fatalf("redistest: %v", err)
		}
		return p
	}
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			tb.Fatalf("redistest: %v", err)
		}
		return k
	}
	serial := int64(0)
	sign := func(tmpl, parent *x509.Certificate, pub, signer any) []byte {
		serial++
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Minute), time.Now().Add(time.Hour)
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
		if err != nil {
			tb.Fatalf("redistest: %v", err)
		}
		return der
	}
	newCA := func(name string) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
		k := newKey()
		tmpl := &x509.Certificate{Subject: pkix.Name{CommonName: name}, IsCA: true, BasicConstraintsValid: true,
			KeyUsage: x509.KeyUsageCertSign}
		der := sign(tmpl, tmpl, &k.PublicKey, k)
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			tb.Fatalf("redistest: %v", err)
		}
		return cert, k, der
	}
	leaf := func(name string, usage x509.ExtKeyUsage, ca *x509.Certificate, caKey *ecdsa.PrivateKey) ([]byte, []byte) {
		k := newKey()
		tmpl := &x509.Certificate{Subject: pkix.Name{CommonName: name}, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			KeyUsage: x509.KeyUsageDigitalSignature, DNSNames: []string{"redis.test"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
		der := sign(tmpl, ca, &k.PublicKey, caKey)
		keyDER, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			tb.Fatalf("redistest: %v", err)
		}
		return der, keyDER
	}

	ca, caKey, caDER := newCA("tally test CA")
	_, _, otherDER := newCA("another CA")
	srvDER, srvKey := leaf("redis.test", x509.ExtKeyUsageServerAuth, ca, caKey)
	cliDER, cliKey := leaf("tally", x509.ExtKeyUsageClientAuth, ca, caKey)
	f := TLSFiles{
		CA: write("ca.pem", "CERTIFICATE", caDER), OtherCA: write("other-ca.pem", "CERTIFICATE", otherDER),
		ServerCert: write("server.pem", "CERTIFICATE", srvDER), ServerKey: write("server-key.pem", "PRIVATE KEY", srvKey),
		ClientCert: write("client.pem", "CERTIFICATE", cliDER), ClientKey: write("client-key.pem", "PRIVATE KEY", cliKey),
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	pair, err := tls.LoadX509KeyPair(f.ClientCert, f.ClientKey)
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	f.Client = &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	return f
}
