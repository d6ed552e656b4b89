"""The argparse block, printed options and experiment name of a CALF look-alike (tsattn's tests and demo; not
upstream code). It builds no model: it prints the options and the ``setting`` name a run would use."""
import argparse

from utils.print_args import print_args

if __name__ == '__main__':
    parser = argparse.ArgumentParser(description='CALF look-alike')

    # basic config
    parser.add_argument('--task_name', type=str, default='long_term_forecast', help='task name')
    parser.add_argument('--is_training', type=int, default=1, help='status')
    parser.add_argument('--model_id', type=str, default='test', help='model id')
    parser.add_argument('--model', type=str, default='CALF', help='model name')
    parser.add_argument('--data', type=str, default='ETTh1', help='dataset type')
    parser.add_argument('--features', type=str, default='M', help='forecasting task, options:[M, S, MS]')

    # forecasting task
    parser.add_argument('--seq_len', type=int, default=96, help='input sequence length')
    parser.add_argument('--label_len', type=int, default=0, help='start token length')
    parser.add_argument('--pred_len', type=int, default=96, help='prediction sequence length')

    # model define
    parser.add_argument('--d_model', type=int, default=768, help='dimension of model')
    parser.add_argument('--n_heads', type=int, default=4, help='num of heads')
    parser.add_argument('--e_layers', type=int, default=2, help='num of encoder layers')
    parser.add_argument('--d_layers', type=int, default=1, help='num of decoder layers')
    parser.add_argument('--d_ff', type=int, default=768, help='dimension of fcn')
    parser.add_argument('--factor', type=int, default=1, help='attn factor')
    parser.add_argument('--distil', action='store_false', help='no distilling', default=True)
    parser.add_argument('--embed', type=str, default='timeF', help='time features encoding')
    parser.add_argument('--itr', type=int, default=1, help='experiments times')
    parser.add_argument('--des', type=str, default='test', help='exp description')

    # lora
    parser.add_argument('--r', type=int, default=8)
    parser.add_argument('--lora_alpha', type=int, default=32)
    parser.add_argument('--lora_dropout', type=float, default=0.1)

    # gpt
    parser.add_argument('--gpt_layers', type=int, default=6, help='number of hidden layers in gpt')

    args = parser.parse_args()

    print('Args in experiment:')
    print_args(args)

    if args.is_training:
        for ii in range(args.itr):
            # the experiment's name: its checkpoint folder and result lines
            setting = '{}_{}_{}_{}_ft{}_sl{}_ll{}_pl{}_dm{}_nh{}_el{}_dl{}_df{}_fc{}_eb{}_dt{}_{}_gpt{}_{}'.format(
                args.task_name, args.model_id, args.model, args.data, args.features, args.seq_len,
                args.label_len, args.pred_len, args.d_model, args.n_heads, args.e_layers, args.d_layers,
                args.d_ff, args.factor, args.embed, args.distil, args.des, args.gpt_layers, ii)
            print('training: {}'.format(setting))
    else:
        ii = 0
        setting = '{}_{}_{}_{}_ft{}_sl{}_ll{}_pl{}_dm{}_nh{}_el{}_dl{}_df{}_fc{}_eb{}_dt{}_{}_gpt{}_{}'.format(
            args.task_name, args.model_id, args.model, args.data, args.features, args.seq_len,
            args.label_len, args.pred_len, args.d_model, args.n_heads, args.e_layers, args.d_layers,
            args.d_ff, args.factor, args.embed, args.distil, args.des, args.gpt_layers, ii)
        print('testing: {}'.format(setting))
