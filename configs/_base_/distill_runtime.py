# Runtime settings shared by mmdist's distillation configs.
custom_imports = dict(imports=['mmdist'], allow_failed_imports=False)
# Smoothed like the losses, so that <name>_inter + <name>_intra = loss_<name>.
distill_mean_pattern = (
    r'.*(loss|time|data_time|grad_norm|_inter|_intra|teacher_acc).*')
