"""DDP wrapper that also runs on a CPU-only torch (gloo), for tests and CPU
clusters. On GPUs it is MMEngine's MMDistributedDataParallel unchanged."""
import torch
from mmengine.model import MMDistributedDataParallel, revert_sync_batchnorm
from torch import nn

from mmdist.registry import MODEL_WRAPPERS


def _on_cpu(module: nn.Module) -> bool:
    param = next(module.parameters(), None)
    return param is None or param.device.type == 'cpu'


@MODEL_WRAPPERS.register_module()
class CPUCompatibleDDP(MMDistributedDataParallel):
    """MMDistributedDataParallel that accepts CPU modules.

    MMEngine's Runner passes ``device_ids=[LOCAL_RANK]``, which DDP refuses
    for CPU modules, and SyncBN cannot synchronise CPU tensors. For a module
    on the CPU this wrapper drops ``device_ids`` and reverts SyncBN to plain
    BN (per-process batch statistics); for CUDA modules it changes nothing.

    Args:
        module (nn.Module): The model to wrap.
        **kwargs: As for :class:`MMDistributedDataParallel`.
    """

    def __init__(self, module: nn.Module, **kwargs) -> None:
        if _on_cpu(module):
            kwargs['device_ids'] = None
            kwargs.pop('output_device', None)
            module = revert_sync_batchnorm(module)
        super().__init__(module=module, **kwargs)


def cpu_launch_config(cfg) -> None:
    """Adapt a config for ``torchrun`` on a machine without CUDA.

    MMEngine's ``pytorch`` launcher calls ``torch.cuda.set_device``, which a
    CPU-only torch cannot do, so the gloo process group is initialised here
    (the Runner then skips its own initialisation) and the model is wrapped
    by :class:`CPUCompatibleDDP`. Does nothing when CUDA is available.

    Args:
        cfg (Config): The run's config, modified in place.
    """
    if torch.cuda.is_available():
        return
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    wrapper = dict(cfg.get('model_wrapper_cfg') or {})
    if wrapper.get(
            'type',
            'MMDistributedDataParallel') in ('MMDistributedDataParallel',
                                             'mmdist.CPUCompatibleDDP',
                                             'CPUCompatibleDDP'):
        wrapper['type'] = 'mmdist.CPUCompatibleDDP'
        wrapper.setdefault('broadcast_buffers', False)
        wrapper.setdefault('find_unused_parameters',
                           cfg.get('find_unused_parameters', False))
    cfg.model_wrapper_cfg = wrapper
    env_cfg = cfg.setdefault('env_cfg', {})
    env_cfg.setdefault('dist_cfg', {})['backend'] = 'gloo'
