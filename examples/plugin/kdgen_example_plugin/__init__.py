"""An example kdgen plug-in (see docs/guide/extending.md, "Plug-ins from other packages"): ``distill.method: mse-logits`` and the ``patriarch-taught`` arm."""
