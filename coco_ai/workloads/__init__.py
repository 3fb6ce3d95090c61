"""What runs inside the TEE: the confidential fine-tune (``finetune``), its data set tooling
(``dataset``), base models (``models``), and the workload kinds the pipeline blocks run
(``kinds``)."""
