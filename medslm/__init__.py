"""medslm: fine-tune medical small LLMs on English:Korean MCQ mixes with QLoRA + FSDP2."""

__version__ = "0.1.0"
