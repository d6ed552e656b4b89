"""The argparse block of a CALF look-alike (tsattn's tests and demo; not upstream code)."""
import argparse

if __name__ == '__main__':
    parser = argparse.ArgumentParser(description='CALF look-alike')

    # forecasting task
    parser.add_argument('--seq_len', type=int, default=96, help='input sequence length')
    parser.add_argument('--pred_len', type=int, default=96, help='prediction sequence length')

    # model define
    parser.add_argument('--d_model', type=int, default=768, help='dimension of model')

    # lora
    parser.add_argument('--r', type=int, default=8)
    parser.add_argument('--lora_alpha', type=int, default=32)
    parser.add_argument('--lora_dropout', type=float, default=0.1)

    # gpt
    parser.add_argument('--gpt_layers', type=int, default=6, help='number of hidden layers in gpt')

    args = parser.parse_args()
    print(args)
