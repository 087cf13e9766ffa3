from .ddp import CPUCompatibleDDP, cpu_launch_config

__all__ = ['CPUCompatibleDDP', 'cpu_launch_config']
