"""DVC stage `resolve`: params.yaml -> data/resolved.json, the values its 'auto' settings stand for
(skincancer.core.resolved says why). No Prefect flow: it is a lookup, done before a server would answer."""

from flows._params import stage_params
from skincancer.core import paths
from skincancer.core.resolved import describe, write_resolved

if __name__ == "__main__":
    params = stage_params("resolve")
    write_resolved(params, paths.RESOLVED)
    print(f"resolve: {describe(params)}")
