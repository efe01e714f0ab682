/*
 * Bare-metal PSCI probe for QEMU's virt machine (PSCI conduit HVC): checks
 * PSCI_VERSION, PSCI_FEATURES and SYSTEM_OFF2 argument validation on the PL011
 * console, then powers off with an accepted SMC32 SYSTEM_OFF2 whose argument
 * registers have garbage in their upper halves. Same results under TCG (with
 * the series) and KVM (Linux >= 6.13 host).
 */
typedef unsigned long u64;
extern long psci_call(u64 fn, u64 a1, u64 a2, u64 a3);

#define UART ((volatile unsigned int *)0x09000000)

static void putc_(char c) { *UART = c; }
static void puts_(const char *s) { while (*s) putc_(*s++); }
static void puthex(u64 v)
{
    puts_("0x");
    for (int i = 60; i >= 0; i -= 4) putc_("0123456789abcdef"[(v >> i) & 0xf]);
}
static void check(const char *what, long got, long want)
{
    puts_(got == want ? "PASS " : "FAIL ");
    puts_(what); puts_(" = "); puthex((u64)got);
    puts_(" (want "); puthex((u64)want); puts_(")\n");
}

#define VERSION   0x84000000UL
#define FEATURES  0x8400000AUL
#define OFF       0x84000008UL
#define OFF2_32   0x84000015UL
#define OFF2_64   0xC4000015UL

void main(void)
{
    puts_("psci-test: start\n");
    check("PSCI_VERSION", psci_call(VERSION, 0, 0, 0), 0x10003);
    check("FEATURES(SYSTEM_OFF)", psci_call(FEATURES, OFF, 0, 0), 0);
    check("FEATURES(SYSTEM_OFF2 smc32)", psci_call(FEATURES, OFF2_32, 0, 0), 1);
    check("FEATURES(SYSTEM_OFF2 smc64)", psci_call(FEATURES, OFF2_64, 0, 0), 1);
    check("SYSTEM_OFF2 smc64 (1, 1)", psci_call(OFF2_64, 1, 1, 0), -2);
    check("SYSTEM_OFF2 smc64 (0, 1)", psci_call(OFF2_64, 0, 1, 0), -2);
    check("SYSTEM_OFF2 smc64 (2, 0)", psci_call(OFF2_64, 2, 0, 0), -2);
    check("SYSTEM_OFF2 smc64 (0, 1<<32)", psci_call(OFF2_64, 0, 1UL << 32, 0), -2);
    check("SYSTEM_OFF2 smc32 (0x80000001, 0)", psci_call(OFF2_32, 0x80000001UL, 0, 0), -2);
    puts_("psci-test: calling SYSTEM_OFF2 smc32 (0xffffffff00000001, 0xffffffff00000000)\n");
    psci_call(OFF2_32, 0xffffffff00000001UL, 0xffffffff00000000UL, 0);
    puts_("psci-test: FAIL SYSTEM_OFF2 returned\n");
}
