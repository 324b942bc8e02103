// Command cert-manager-controller runs cert-manager's controllers for the CA
// and SelfSigned issuers on the local control plane (e2e/cluster), so the
// e2e tests can have real Issuers sign real certificates.
//
// It exists because cert-manager's own main package (cmd/controller) is a
// module of its own that the Go module proxy does not serve; the root module
// github.com/cert-manager/cert-manager is served, and its controller packages
// register themselves with pkg/controller in init(). This program imports
// the ones it needs and starts them the way upstream's cmd/controller does:
// one ContextFactory, every controller built from it, then the shared
// informer factories started, until SIGTERM.
//
// Left out on purpose: leader election (one replica on a test bed), the
// webhook (no validation or defaulting of cert-manager's objects), the
// metrics server, ingress-shim, and the ACME, Vault and Venafi issuers.
// Built by build_cert_manager in e2e/lib/build.sh, pinned by
// CERT_MANAGER_VERSION in e2e/versions.env.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
	"k8s.io/klog/v2"

	controllerpkg "github.com/cert-manager/cert-manager/pkg/controller"
	crapprover "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	crca "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	crselfsigned "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/selfsigned"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	"github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	"github.com/cert-manager/cert-manager/pkg/controller/issuers"
	logf "github.com/cert-manager/cert-manager/pkg/logs"

	// The Issuer implementations the issuers/clusterissuers controllers
	// set up (they register with pkg/issuer in init()).
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/selfsigned"
)

// The controllers started, by their registered names.
var controllers = []string{
	issuers.ControllerName,
	clusterissuers.ControllerName,
	trigger.ControllerName,
	issuing.ControllerName,
	keymanager.ControllerName,
	requestmanager.ControllerName,
	readiness.ControllerName,
	revisionmanager.ControllerName,
	crapprover.ControllerName,
	crca.CRControllerName,
	crselfsigned.CRControllerName,
}

// ReadyMessage is logged once every informer the controllers use has synced;
// e2e/cluster waits for it.
const ReadyMessage = "cert-manager controllers started, caches synced"

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the API server (empty: in-cluster)")
	clusterResourceNamespace := flag.String("cluster-resource-namespace", "cert-manager",
		"namespace of the Secrets that ClusterIssuers refer to")
	workers := flag.Int("workers", 5, "workers per controller")
	klog.InitFlags(nil)
	_ = flag.Set("v", "2") // upstream's default level: one line per issuance step
	flag.Parse()
	logf.InitLogs()
	defer logf.FlushLogs()
	if err := run(*kubeconfig, *clusterResourceNamespace, *workers); err != nil {
		logf.Log.Error(err, "exiting")
		logf.FlushLogs()
		os.Exit(1)
	}
}

func run(kubeconfig, clusterResourceNamespace string, workers int) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	ctx = logf.NewContext(ctx, logf.Log, "controller")
	log := logf.FromContext(ctx)

	// Upstream's defaults (internal/apis/config/controller/v1alpha1), all
	// namespaces.
	factory, err := controllerpkg.NewContextFactory(ctx, controllerpkg.ContextOptions{
		Kubeconfig:         kubeconfig,
		KubernetesAPIQPS:   20,
		KubernetesAPIBurst: 50,
		IssuerOptions: controllerpkg.IssuerOptions{
			ClusterResourceNamespace: clusterResourceNamespace,
		},
		CertificateOptions: controllerpkg.CertificateOptions{
			CopiedAnnotationPrefixes:                 []string{"*", "-kubectl.kubernetes.io/", "-fluxcd.io/", "-argocd.argoproj.io/"},
			CertificateRequestMinimumBackoffDuration: time.Hour,
			CertificateRequestMaximumBackoffDuration: 32 * time.Hour,
		},
	})
	if err != nil {
		return err
	}

	g, gctx := errgroup.WithContext(ctx)
	for _, name := range controllers {
		construct, ok := controllerpkg.Known()[name]
		if !ok {
			return fmt.Errorf("controller %q is not registered (its package is not imported)", name)
		}
		c, err := construct(factory)
		if err != nil {
			return fmt.Errorf("building controller %q: %w", name, err)
		}
		g.Go(func() error {
			log.V(logf.InfoLevel).Info("starting controller", "controller", name)
			if err := c.Run(workers, gctx); err != nil {
				return fmt.Errorf("controller %q: %w", name, err)
			}
			return nil
		})
	}

	// Every Context built from the factory shares its informer factories;
	// the controllers above asked them for their informers, so starting them
	// now starts exactly those.
	shared, err := factory.Build()
	if err != nil {
		return err
	}
	shared.SharedInformerFactory.Start(gctx.Done())
	shared.KubeSharedInformerFactory.Start(gctx.Done())
	g.Go(func() error {
		for _, synced := range []map[string]bool{
			byName(shared.SharedInformerFactory.WaitForCacheSync(gctx.Done())),
			shared.KubeSharedInformerFactory.WaitForCacheSync(gctx.Done()),
		} {
			for informer, ok := range synced {
				if !ok {
					log.Info("informer did not sync before shutdown", "informer", informer)
					return nil
				}
			}
		}
		log.Info(ReadyMessage, "controllers", controllers, "clusterResourceNamespace", clusterResourceNamespace)
		return nil
	})

	err = g.Wait()
	shared.SharedInformerFactory.Shutdown()
	shared.KubeSharedInformerFactory.Shutdown()
	log.Info("stopped")
	return err
}

// byName turns the cert-manager informer factory's answer (keyed by type)
// into the string-keyed one of the Kubernetes informer factory.
func byName[K comparable](synced map[K]bool) map[string]bool {
	out := make(map[string]bool, len(synced))
	for k, ok := range synced {
		out[fmt.Sprint(k)] = ok
	}
	return out
}
