"""Train a network with cross-entropy alone: a teacher, or the plain-student baseline.

    python train_teacher.py --model resnet32x4 --dataset cifar100
"""

from helper.cli import exit_process, main
from helper.options import parse_teacher_args

if __name__ == "__main__":
    exit_process(main(parse_teacher_args, "teacher"))
