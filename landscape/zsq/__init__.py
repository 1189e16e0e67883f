"""Zero-shot quantization trainer: GDFQ generator + BNS loss, gradient inundation, runs.

    from landscape.zsq.runs import train_recipe
    train_recipe("analyses/default.toml")   # teacher, then ptq, kd, gdfq, kl, ait
"""
