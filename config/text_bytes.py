# A small JRT-RNN on any UTF-8 text file with the paper's prefix-LM objective (JRT paper), byte tokens,
# offline and CPU-sized:  python train.py config/text_bytes.py --data_path=input.txt
task = "text"
tokenizer = "bytes"          # 258 ids: 256 bytes, <|endoftext|>, [MASK]; nothing to download
data_path = "input.txt"      # tokenised once into input.txt.bytes.bin
model = "jrt-tiny"           # conv, pla, conv, pla
d_model = 128
init_std = 0.0               # the preset's N(0, 0.02), as in the paper
seq_len = 256
prefix_len = 128             # M: the first half is read non-causally, 15% of it masked (MLM, weight 0.25)
batch_size = 16
max_iters = 2000
warmup_iters = 100
lr = 1e-3
eval_interval = 200
eval_iters = 20
out_dir = "out-text"
