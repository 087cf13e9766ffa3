# Runtime settings shared by mmdist's distillation configs.
custom_imports = dict(imports=['mmdist'], allow_failed_imports=False)
