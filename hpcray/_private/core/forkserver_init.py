"""Imported once in each rank's forkserver (its preload): the forkserver, like the executors
it forks, ignores the signals meant for the rank (srun forwards SIGUSR1 to the whole process
group; its default action would end the forkserver and, with it, every executor) and dies
with its rank."""

from .executor import detach

detach()
