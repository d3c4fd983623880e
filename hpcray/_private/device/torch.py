"""CUDA torch tensors as the "nccl" collective backend sees them."""

from __future__ import annotations

import numpy as np

from .arrays import ArrayLibrary, DeviceArray


class TorchArrays(ArrayLibrary):
    """CUDA torch tensors in "nccl" collective groups."""

    def __init__(self) -> None:
        self._dtypes: dict = {}

    def wrap(self, x, writable: bool) -> DeviceArray:
        import torch

        t = x.detach()
        if t.device.type != "cuda":
            raise TypeError(f"is a torch tensor on {t.device}: backend 'nccl' moves CUDA tensors; "
                            "use backend='mpi' for CPU tensors, or move it with .cuda()")
        c = t
        if t.dtype == torch.bfloat16:
            c = t.float()  # numpy (and so the header and the host reductions) has no bfloat16
        elif not t.is_contiguous():
            c = t.contiguous()
        writeback = (lambda: t.copy_(c)) if writable and c is not t else None
        return DeviceArray(self, c, c.data_ptr(), self._numpy_dtype(c.dtype), tuple(c.shape),
                           c.device.index or 0, writeback)

    def _numpy_dtype(self, dtype) -> np.dtype:
        found = self._dtypes.get(dtype)
        if found is None:
            import torch

            try:
                found = self._dtypes[dtype] = torch.empty(0, dtype=dtype).numpy().dtype
            except TypeError:
                raise TypeError(f"torch dtype {dtype} has no numpy equivalent") from None
        return found

    def stream(self, d: DeviceArray) -> int:
        import torch

        return torch.cuda.current_stream(d.array.device).cuda_stream

    def _bytes(self, d: DeviceArray):
        import torch

        return d.array.reshape(-1).view(torch.uint8)

    def download(self, d: DeviceArray, host: np.ndarray) -> None:
        import torch

        torch.from_numpy(host.reshape(-1).view(np.uint8)).copy_(self._bytes(d), non_blocking=True)
        torch.cuda.current_stream(d.array.device).synchronize()

    def upload(self, d: DeviceArray, host: np.ndarray) -> None:
        import torch

        self._bytes(d).copy_(torch.from_numpy(host.reshape(-1).view(np.uint8)), non_blocking=True)
        torch.cuda.current_stream(d.array.device).synchronize()

    def divide(self, d: DeviceArray, n: int) -> None:
        import torch

        d.array.div_(n)
        torch.cuda.current_stream(d.array.device).synchronize()

    def pinned(self, nbytes: int) -> np.ndarray:
        import torch

        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True).numpy()


ARRAYS = TorchArrays()
