    .section .text.start
    .globl _start
_start:
    ldr x0, =stack_top
    mov sp, x0
    bl main
1:  wfi
    b 1b

    .text
    .globl psci_call
psci_call:              /* x0 = function, x1..x3 = arguments; result in x0 */
    hvc #0
    ret

    .bss
    .balign 16
    .space 16384
stack_top:
