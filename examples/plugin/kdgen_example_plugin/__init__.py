"""An example kdgen plug-in (see README "Plug-ins"): ``distill.method: mse-logits`` and the ``patriarch-taught`` arm."""
