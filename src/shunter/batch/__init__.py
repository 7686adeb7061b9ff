"""`shunter batch`: an OpenAI batch file through the gateway (or any OpenAI server), in
BatchLLM's prefix-sharing order, resumable."""

from shunter.batch.file import BatchLine, LineError, finished_ids, read_batch, read_records
from shunter.batch.order import ORDERS, batchllm_groups, batchllm_order, prefix_groups

__all__ = ["ORDERS", "BatchLine", "LineError", "batchllm_groups", "batchllm_order",
           "finished_ids", "prefix_groups", "read_batch", "read_records"]
