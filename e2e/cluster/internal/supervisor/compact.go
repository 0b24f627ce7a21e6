package supervisor

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"k8s.io/apiserver/pkg/storage/etcd3"
)

// compactRevKey is where kube-apiserver's compactor keeps the last compacted revision
// (k8s.io/apiserver/pkg/storage/etcd3, compact.go): the compare-and-swap of its Compact.
const compactRevKey = "compact_rev_key"

// Compact is `pie-cluster compact`: it compacts the cluster's etcd to its current revision the
// way kube-apiserver's own compactor does (etcd3.Compact: compact_rev_key is set to the
// revision, then etcd is compacted to it), so the apiserver learns of the compaction as of its
// own, and prints the revision. Older revisions are gone: a watch or list at one of them that
// reaches etcd gets 410 Gone (docs/testing.md says when one does).
func Compact(dir string) int {
	st := state{dir: dir}
	info, err := st.runningInfo()
	if err != nil {
		return fail("%v", err)
	}
	rev, err := compactEtcd(info.Etcd)
	if err != nil {
		return fail("compacting etcd at %s: %v", info.Etcd, err)
	}
	fmt.Println(rev)
	return 0
}

func compactEtcd(endpoint string) (int64, error) {
	client, err := clientv3.New(clientv3.Config{
		Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
	})
	if err != nil {
		return 0, err
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	// The apiserver's compactor may swap compact_rev_key between our read and our swap: then
	// read again.
	for attempt := 0; ; attempt++ {
		resp, err := client.Get(ctx, compactRevKey)
		if err != nil {
			return 0, err
		}
		var version int64
		if len(resp.Kvs) > 0 {
			version = resp.Kvs[0].Version
		}
		rev := resp.Header.Revision
		_, _, compacted, err := etcd3.Compact(ctx, client, version, rev)
		if err != nil {
			return 0, err
		}
		if compacted == rev {
			return rev, nil
		}
		if attempt == 3 {
			return 0, fmt.Errorf("%s kept changing under us", compactRevKey)
		}
	}
}
