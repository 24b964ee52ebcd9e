# JRT-RNN 360M on text with the paper's recipe (JRT paper): GPT-2 BPE, 2048-token sequences split at
# M = 1024, prefix-LM + 0.25 MLM, AdamW 8e-4 -> 8e-5, betas (0.9, 0.95), wd 0.1, 1% warmup, clip 1.0,
# bf16, 256 x 2048 tokens per update, 60k updates (30B tokens). For 8 GPUs:
#   torchrun --standalone --nproc_per_node=8 train.py config/jrt_360m.py --data_path=/data/pile.txt
# Baselines: --model=based-360m or --model=transformer-360m (plain next-token loss).
task = "text"
tokenizer = "gpt2"
data_path = "data/pile.txt"
model = "jrt-360m"
init_std = 0.0               # the preset's N(0, 0.02) (JRT paper)
seq_len = 2048
prefix_len = 1024
batch_size = 8               # per process and micro-step; 8 x 2048 tokens fit an 80 GB GPU in bf16
grad_accum = 32              # 8 x 32 = 256 sequences per update, split over the processes
max_iters = 60000
warmup_iters = 600
lr = 8e-4
min_lr_ratio = 0.1
weight_decay = 0.1
eval_interval = 1000
eval_iters = 50
log_interval = 10
compile = True
out_dir = "out-jrt-360m"
