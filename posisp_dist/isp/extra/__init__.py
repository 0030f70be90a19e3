"""ISP modules beyond the paper's ten, one per file, found by `posisp_dist.isp.catalogue.discover`.

A file here defines its reference function `fn(img, params, xp) -> img` (pure, vectorised over `xp`, the
conventions of `modules.py`), its differentiable torch twin (NCHW tensors, physical params), and
``SPEC = module_spec(name, fn, [(param, low, high, unit, identity), ...], cost, twin=..., kernels={...})``.
Its test file checks what the module does; the catalogue-wide tests check the rest. Files starting with `_`
are not modules. A module here is opt-in: a config names it in `isp.modules`.
"""
