"""DVC stage `resolve`: params.yaml -> data/resolved.json, the values its 'auto' settings stand for
(skincancer.resolved says why). No Prefect flow: it is a lookup, done before a server would answer."""

from _params import stage_params

from skincancer import paths
from skincancer.resolved import describe, write_resolved

if __name__ == "__main__":
    params = stage_params("resolve")
    write_resolved(params, paths.RESOLVED)
    print(f"resolve: {describe(params)}")
