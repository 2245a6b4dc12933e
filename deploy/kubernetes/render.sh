#!/bin/sh
# Writes rendered/<target>.yaml, the output of `kubectl kustomize` for each overlay and example, so that the
# manifests can be reviewed and validated without kubectl (tests/deploy/test_kubernetes.py checks they are
# current).  Run it after changing anything here.
set -eu
cd "$(dirname "$0")"
for target in overlays/cpu overlays/gpu examples/prometheus examples/managed-redis examples/weights-hostpath; do
    name=$(echo "$target" | sed -e 's#^overlays/##' -e 's#^examples/#example-#')
    {
        echo "# Rendered from deploy/kubernetes/$target by render.sh (kubectl kustomize); do not edit."
        kubectl kustomize "$target"
    } > "rendered/$name.yaml"
done
