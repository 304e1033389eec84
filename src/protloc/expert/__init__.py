"""The human-expert comparison (paper section 3.2) as a workflow: select a study set, fine-tune the
model for single labels, show the samples to experts, collect answers, report the statistics.

Modules: ``study`` (study folder and sample selection), ``finetune`` (last-layer softmax fine-tuning
and study predictions), ``render`` (the four expert views), ``db`` (answer database), ``web``
(annotation pages, ``create_expert_app``), ``stats`` and ``report``.
"""
